-- Data check on the serving file before it is swapped in: returns offending rows;
-- empty means pass. A user must not get an item twice or two items at one rank,
-- and ranks must run 1..n without gaps.
with recs as (
    select * from recommendations
),

dup_items as (
    select user_id, 'duplicate item ' || item_id as problem
    from recs group by user_id, item_id having count(*) > 1
),

rank_gaps as (
    select user_id, 'ranks not 1..' || count(*) as problem
    from recs group by user_id
    having max(rank) <> count(*) or min(rank) <> 1 or count(distinct rank) <> count(*)
)

select * from dup_items
union all
select * from rank_gaps
limit 20
