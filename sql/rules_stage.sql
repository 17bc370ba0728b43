-- rule_file with the four rule columns; those the file lacks come out null (union by
-- name). rules.load has refused unknown columns before.
create or replace temp table rule_staging as
with empty as (
    select
        null::bigint as _row,
        null::varchar as user_id,
        null::varchar as item_id,
        null::varchar as category,
        null::varchar as reason
    where false
),

file as (
    select * from rule_file
)

select * from empty
union all by name
select * from file
