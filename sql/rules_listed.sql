-- The per-user exclusion lists alone, without the history they are added to in scoring:
-- the evaluation masks them on held-out splits, whose targets lie in that history.
with users as (
    select user_id from rule_users
),

rules as (
    select kind, user_id, item_id from read_parquet($rules)
)

select distinct r.user_id, r.item_id
from rules as r
semi join users as u on u.user_id = r.user_id
where $exclude_user_items and r.kind = 'exclude_user_items'
order by r.user_id, r.item_id
