-- Validate staged user rows (all varchar); bad_field is null for good rows. Only the
-- contract's columns are read; bounds are parameters (IngestConfig).
with staged as (
    select _row, user_id, created_at
    from staging
),

parsed as (
    select
        _row,
        user_id,
        created_at,
        nullif(trim(user_id), '') as p_user_id,
        nullif(trim(created_at), '') as created_text,
        case
            when left(trim(created_at), 1) between '0' and '9'
                then try_cast(trim(created_at) as timestamptz)
        end as p_created_at
    from staged
),

problems as (
    select
        *,
        case
            when $file_field is not null then [$file_field, $file_reason]
            when p_user_id is null then ['user_id', 'user_id is empty']
            when length(p_user_id) > $max_id_length
                then ['user_id', 'user_id is longer than ' || $max_id_length || ' characters']
            when regexp_matches(p_user_id, '[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]')
                then ['user_id', 'user_id contains a control character']
            when created_text is not null and p_created_at is null
                then ['created_at', 'created_at ''' || left(created_at, 100)
                    || ''' is not an ISO-8601 timestamp']
            when not isfinite(p_created_at) or p_created_at < $min_ts or p_created_at > $max_ts
                then ['created_at', 'created_at ''' || left(created_at, 100)
                    || ''' is outside the valid range '
                    || strftime($min_ts, '%Y-%m-%d %H:%M') || ' .. '
                    || strftime($max_ts, '%Y-%m-%d %H:%M') || ' UTC']
        end as problem
    from parsed
)

select
    _row,
    user_id,
    created_at,
    p_user_id,
    p_created_at,
    problem[1] as bad_field,
    problem[2] as reason,
    contains(concat_ws(' ', user_id, created_at), chr(10))
        or contains(concat_ws(' ', user_id, created_at), chr(13)) as p_line_break,
    p_user_id as p_key
from problems
