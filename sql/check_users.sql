-- Validate staged user rows (all varchar); bad_field is null for good rows.
with staged as (
    select * from staging
),

parsed as (
    select
        *,
        nullif(trim(user_id), '') as p_user_id,
        nullif(trim(created_at), '') as created_text,
        try_cast(nullif(trim(created_at), '') as timestamptz) as p_created_at
    from staged
),

checked as (
    select
        *,
        case
            when p_user_id is null then 'user_id'
            when created_text is not null and p_created_at is null then 'created_at'
        end as bad_field
    from parsed
)

select
    *,
    case bad_field
        when 'user_id' then 'user_id is empty'
        when 'created_at' then 'created_at ''' || created_at || ''' is not an ISO-8601 timestamp'
    end as reason,
    p_user_id as p_key
from checked
