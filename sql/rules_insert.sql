-- The rows of rule_staging that passed check_rules (failed: the rejected _row numbers),
-- once per entry (the first record wins), as rule_lists rows of list $kind.
insert into rule_lists
with staged as (
    select * from rule_staging
),

failed as (
    select _row from rule_failed
),

good as (
    select
        s._row,
        nullif(s.user_id, '') as user_id,
        nullif(s.item_id, '') as item_id,
        nullif(s.category, '') as category,
        nullif(s.reason, '') as reason
    from staged as s
    anti join failed as f on f._row = s._row
),

first_of_each as (
    select *
    from good
    qualify row_number() over (partition by user_id, item_id, category order by _row) = 1
)

select $kind, user_id, item_id, category, reason, $source_file, _row, $now
from first_of_each
order by _row
