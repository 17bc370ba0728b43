-- What each rule list holds: rows, users (per-user lists), the file and time of its load.
with lists as (
    select * from rule_lists
)

select
    kind,
    count(*) as rows,
    count(distinct user_id) as users,
    max(source_file) as source_file,
    max(loaded_at) as loaded_at
from lists
group by kind
order by kind
