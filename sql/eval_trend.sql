-- One figure (metric, K, slice) of every model over the latest $runs runs, oldest first.
with figures as (
    select * from eval_metrics
    where metric = $metric and k = $k and slice = $slice
),

runs as (
    select run_id, max(as_of) as as_of, max(evaluated_at) as evaluated_at
    from figures
    group by run_id
),

latest as (
    select * from runs
    order by as_of desc, evaluated_at desc, run_id desc
    limit $runs
)

select f.run_id, l.as_of, l.evaluated_at, f.model_version, f.protocol, f.split, f.model, f.value
from figures as f
inner join latest as l on l.run_id = f.run_id
order by l.as_of, l.evaluated_at, f.run_id, f.protocol, f.split, f.model
