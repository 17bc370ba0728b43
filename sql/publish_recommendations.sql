-- The published recommendations of one run, from the scored Parquet parts.
create table recommendations as
with scored as (
    select * from read_parquet($parts)
)

select
    user_id,
    rank,
    item_id,
    score,
    reason,
    because_item_id,
    $model_version as model_version,
    $run_id as run_id,
    $generated_at::timestamptz as generated_at
from scored
order by user_id, rank
