-- Active items the global rules take out for every user, each named by the first rule
-- that removes it: the global exclusion list ($exclude_items), then, when a global
-- inclusion list exists ($include_items, rows without a user_id), every item not on it.
with items as (
    select item_id from read_parquet($items) where active
),

rules as (
    select kind, user_id, item_id from read_parquet($rules)
),

excluded as (
    select distinct item_id from rules
    where $exclude_items and kind = 'exclude_items'
),

included as (
    select distinct item_id from rules
    where $include_items and kind = 'include_items' and user_id is null
),

removed as (
    select
        it.item_id,
        case when ex.item_id is not null then 'exclude_items' else 'include_items' end as rule
    from items as it
    left join excluded as ex on ex.item_id = it.item_id
    left join included as inc on inc.item_id = it.item_id
    where ex.item_id is not null or (inc.item_id is null and exists (select 1 from included))
)

select item_id, rule from removed
order by item_id
