-- The candidate figures (slice 'all') of the latest run that evaluated $model_version:
-- what the live model was promoted on.
with candidate as (
    select * from eval_metrics
    where model = 'nightrec' and model_version = $model_version and slice = 'all'
),

latest as (
    select run_id from candidate
    order by as_of desc, evaluated_at desc, run_id desc
    limit 1
)

select c.run_id, c.protocol, c.split, c.model, c.metric, c.k, c.value
from candidate as c
inner join latest as l on l.run_id = c.run_id
order by c.protocol, c.split, c.metric, c.k
