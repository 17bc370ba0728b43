-- The per-user lists of one kind ($kind: include_items or exclude_user_items; rows with a
-- user_id) of the users of rule_users, when that rule is on ($on). Inclusion lists: each
-- user is recommended only items on its list. Exclusion lists, read alone: the evaluation
-- masks them on held-out splits (scoring adds them to the history in
-- rules_user_exclude.sql).
with users as (
    select user_id from rule_users
),

rules as (
    select kind, user_id, item_id from read_parquet($rules)
)

select distinct r.user_id, r.item_id
from rules as r
semi join users as u on u.user_id = r.user_id
where $on and r.kind = $kind
order by r.user_id, r.item_id
