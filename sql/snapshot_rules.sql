-- The business-rule lists as they stand when the snapshot is cut (rule_lists).
with lists as (
    select kind, user_id, item_id, category from rule_lists
)

select distinct kind, user_id, item_id, category
from lists
order by kind, user_id nulls first, item_id nulls first, category nulls first
