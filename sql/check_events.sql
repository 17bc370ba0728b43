-- Validate staged event rows (all varchar). One row per input row: the parsed fields,
-- and the first failed check as (bad_field, reason); bad_field is null for good rows.
with staged as (
    select * from staging
),

parsed as (
    select
        *,
        nullif(trim(user_id), '') as p_user_id,
        nullif(trim(item_id), '') as p_item_id,
        lower(trim(event_type)) as p_event_type,
        case
            when regexp_full_match(trim(ts), '[0-9]{9,10}') then to_timestamp(trim(ts)::bigint)
            else try_cast(trim(ts) as timestamptz)
        end as p_ts,
        nullif(trim(value), '') as value_text,
        try_cast(nullif(trim(value), '') as double) as p_value,
        nullif(trim(event_id), '') as p_event_id
    from staged
),

checked as (
    select
        *,
        case
            when p_user_id is null then 'user_id'
            when p_item_id is null then 'item_id'
            when p_event_type is null or not list_contains($event_types, p_event_type)
                then 'event_type'
            when p_ts is null then 'ts'
            when value_text is not null and p_value is null then 'value'
        end as bad_field
    from parsed
)

select
    *,
    case bad_field
        when 'user_id' then 'user_id is empty'
        when 'item_id' then 'item_id is empty'
        when 'event_type' then 'unknown event_type ' || coalesce('''' || event_type || '''', 'null')
            || ' (expected one of ' || array_to_string($event_types, ', ') || ')'
        when 'ts' then 'ts ' || coalesce('''' || ts || '''', 'null')
            || ' is not an ISO-8601 timestamp or epoch seconds'
        when 'value' then 'value ''' || value || ''' is not a number'
    end as reason,
    coalesce(
        p_event_id,
        sha256(concat_ws('|', p_user_id, p_item_id, p_event_type, strftime(p_ts, '%Y-%m-%dT%H:%M:%S.%f'),
            coalesce(p_value::varchar, '')))
    ) as p_key
from checked
