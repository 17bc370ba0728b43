-- Most popular active items: distinct users in the last $window_days before the latest
-- interaction of the snapshot; ties by item id; items nobody touched come last, so a
-- small catalog still fills the list. Cold users get these.
with interactions as (
    select * from read_parquet($interactions)
),

items as (
    select * from read_parquet($items)
),

horizon as (
    select max(last_ts) - to_days($window_days) as since from interactions
),

recent as (
    select i.item_id, count(distinct i.user_id) as users
    from interactions as i, horizon as h
    where i.last_ts >= h.since
    group by i.item_id
)

select it.item_id, coalesce(r.users, 0)::double as score
from items as it
left join recent as r on r.item_id = it.item_id
where it.active
order by score desc, it.item_id
limit $limit
