-- Every evaluation figure of one run.
with run_rows as (
    select * from eval_metrics where run_id = $run_id
)

select
    run_id, as_of, model_version, protocol, split, model, metric, k, slice, value, evaluated_at
from run_rows
order by protocol, split, model, slice, metric, k
