-- Per-user inclusion lists ($include_items, rows with a user_id) of the users of
-- rule_users: each is recommended only items on its list.
with users as (
    select user_id from rule_users
),

rules as (
    select kind, user_id, item_id from read_parquet($rules)
)

select distinct r.user_id, r.item_id
from rules as r
semi join users as u on u.user_id = r.user_id
where $include_items and r.kind = 'include_items'
order by r.user_id, r.item_id
