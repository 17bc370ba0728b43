-- Rows of rule_staging that break the contract of rule list $kind: the first failing
-- field per row, with the reason. An empty result passes.
with staged as (
    select * from rule_staging
),

checks as (
    select _row, 1 as ord, 'user_id' as field, 'is empty' as reason
    from staged
    where $kind = 'exclude_user_items' and coalesce(user_id, '') = ''
    union all
    select _row, 2, 'item_id', 'is empty'
    from staged
    where $kind <> 'consumables' and coalesce(item_id, '') = ''
    union all
    select _row, 3, 'item_id', 'give exactly one of item_id and category'
    from staged
    where $kind = 'consumables' and (coalesce(item_id, '') = '') = (coalesce(category, '') = '')
    union all
    select _row, 4, 'category', 'only the consumables list takes a category'
    from staged
    where $kind <> 'consumables' and coalesce(category, '') <> ''
    union all
    select _row, 5, 'user_id', 'the global exclusion list takes no user_id'
    from staged
    where $kind in ('exclude_items', 'consumables') and coalesce(user_id, '') <> ''
    union all
    select _row, 6, f.field, 'longer than ' || cast($max_id as varchar) || ' characters or has control characters'
    from staged
    cross join
        (values ('user_id'), ('item_id'), ('category')) as f (field)
    where
        length(case f.field when 'user_id' then user_id when 'item_id' then item_id else category end)
        > $max_id
        or regexp_matches(
            case f.field when 'user_id' then user_id when 'item_id' then item_id else category end,
            '[\x00-\x1f\x7f]'
        )
)

select _row, field, reason
from checks
qualify row_number() over (partition by _row order by ord, field) = 1
order by _row
