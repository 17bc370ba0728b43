-- Each user's exclude set under the rules, over the full history (every interaction
-- before the cut-off, not only the model's last max_history items), for the users of
-- rule_users. One row per (user, item), labelled:
--   history             interacted with: excluded, as without rules
--   consumables         a purchased consumable (its item_id or category listed) whose last
--                       purchase is at least $consumable_days days before $cutoff: back in
--                       (0 days: the rule is off)
--   exclude_user_items  on the user's exclusion list ($exclude_user_items) and not already
--                       excluded by the two above: excluded
with users as (
    select user_id from rule_users
),

history as (
    select h.user_id, h.item_id, h.purchased, h.last_purchase_ts
    from read_parquet($interactions) as h
    semi join users as u on u.user_id = h.user_id
),

items as (
    select item_id, category from read_parquet($items)
),

rules as (
    select kind, user_id, item_id, category from read_parquet($rules)
),

consumable as (
    select it.item_id
    from items as it
    where
        $consumable_days > 0
        and (
            it.item_id in (select item_id from rules where kind = 'consumables')
            or it.category in (select category from rules where kind = 'consumables')
        )
),

readmitted as (
    select h.user_id, h.item_id
    from history as h
    semi join consumable as c on c.item_id = h.item_id
    where h.purchased and h.last_purchase_ts < $cutoff - to_days($consumable_days)
),

listed as (
    select distinct r.user_id, r.item_id
    from rules as r
    semi join users as u on u.user_id = r.user_id
    where $exclude_user_items and r.kind = 'exclude_user_items'
),

labelled as (
    select
        coalesce(h.user_id, l.user_id) as user_id,
        coalesce(h.item_id, l.item_id) as item_id,
        case
            when h.user_id is not null and rd.user_id is null then 'history'
            when l.user_id is not null then 'exclude_user_items'
            else 'consumables'
        end as rule
    from history as h
    full outer join listed as l on l.user_id = h.user_id and l.item_id = h.item_id
    left join readmitted as rd on rd.user_id = h.user_id and rd.item_id = h.item_id
)

select user_id, item_id, rule from labelled
order by user_id, item_id
