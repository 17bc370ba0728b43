-- One row per (user, item) seen before the cut-off: when first and last, how often,
-- and the strongest signal. Training reads histories in first_ts order; scoring
-- excludes every item here (the consumables rule reads last_purchase_ts).
--
-- first_strength: what the user did with the item when it entered the history, the
-- strongest of the pair's events at first_ts (a code the encoder reads beside the item,
-- ``model.STRENGTH_CODES``): 1 view, 2 click, 3 add_to_cart, 4 purchase, 5..9 a rating
-- of 1..5 (rounded, clamped), 10 a rating without a value. Only events at first_ts count,
-- so it never describes anything later than the item's own place in the history.
with events_before as (
    select
        *,
        case event_type
            when 'view' then 1
            when 'click' then 2
            when 'add_to_cart' then 3
            when 'purchase' then 4
            -- (greatest and least skip nulls: a rating without a value is tested first)
            when 'rating' then
                case when value is null then 10
                else 4 + least(greatest(round(value), 1), 5)::integer end
            else 0
        end as strength
    from events
    where ts < $cutoff
),

per_pair as (
    select
        user_id,
        item_id,
        min(ts) as first_ts,
        max(ts) as last_ts,
        count(*) as n_events,
        bool_or(event_type = 'purchase') as purchased,
        max(ts) filter (where event_type = 'purchase') as last_purchase_ts,
        -- earliest event first, the strongest of those tied on it
        arg_min(strength, epoch_us(ts) * 16 - strength)::tinyint as first_strength
    from events_before
    group by user_id, item_id
)

select * from per_pair
order by user_id, first_ts, item_id
