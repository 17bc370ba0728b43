-- One run's evaluation figures, from the registered frame new_eval_metrics.
insert into eval_metrics (
    run_id, as_of, model_version, protocol, split, model, metric, k, slice, value, evaluated_at
)
with new_rows as (
    select * from new_eval_metrics
)

select
    run_id,
    as_of::date,
    model_version,
    protocol,
    split,
    model,
    metric,
    k::integer,
    slice,
    value::double,
    evaluated_at::timestamptz
from new_rows
