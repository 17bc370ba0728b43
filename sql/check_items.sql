-- Validate staged item rows (all varchar); bad_field is null for good rows.
with staged as (
    select * from staging
),

parsed as (
    select
        *,
        nullif(trim(item_id), '') as p_item_id,
        case
            when nullif(trim(active), '') is null then true
            when lower(trim(active)) in ('true', 't', '1', 'yes', 'y') then true
            when lower(trim(active)) in ('false', 'f', '0', 'no', 'n') then false
        end as p_active,
        nullif(trim(updated_at), '') as updated_text,
        try_cast(nullif(trim(updated_at), '') as timestamptz) as p_updated_at
    from staged
),

checked as (
    select
        *,
        case
            when p_item_id is null then 'item_id'
            when p_active is null then 'active'
            when updated_text is not null and p_updated_at is null then 'updated_at'
        end as bad_field
    from parsed
)

select
    *,
    case bad_field
        when 'item_id' then 'item_id is empty'
        when 'active' then 'active ''' || active || ''' is not a boolean'
        when 'updated_at' then 'updated_at ''' || updated_at || ''' is not an ISO-8601 timestamp'
    end as reason,
    p_item_id as p_key
from checked
