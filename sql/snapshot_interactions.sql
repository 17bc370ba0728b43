-- One row per (user, item) seen before the cut-off: when first and last, how often,
-- and the strongest signal. Training reads histories in first_ts order; scoring
-- excludes every item here (the consumables rule reads last_purchase_ts).
with events_before as (
    select * from events where ts < $cutoff
),

per_pair as (
    select
        user_id,
        item_id,
        min(ts) as first_ts,
        max(ts) as last_ts,
        count(*) as n_events,
        bool_or(event_type = 'purchase') as purchased,
        max(ts) filter (where event_type = 'purchase') as last_purchase_ts
    from events_before
    group by user_id, item_id
)

select * from per_pair
order by user_id, first_ts, item_id
