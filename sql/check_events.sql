-- Validate staged event rows (all varchar). One row per input row: the parsed fields,
-- and the first failed check as (bad_field, reason); bad_field is null for good rows.
-- Only the contract's columns are read, by name: a file's other columns never get here.
-- Bounds are parameters (IngestConfig): ids of 1..$max_id_length characters without
-- control characters, ts within [$min_ts, $max_ts], value finite and |value| <= bound.
with staged as (
    select _row, event_id, user_id, item_id, event_type, ts, value
    from staging
),

parsed as (
    select
        _row,
        event_id,
        user_id,
        item_id,
        event_type,
        ts,
        value,
        nullif(trim(event_id), '') as p_event_id,
        nullif(trim(user_id), '') as p_user_id,
        nullif(trim(item_id), '') as p_item_id,
        lower(trim(event_type)) as p_event_type,
        -- epoch seconds, or text that starts with a digit (ISO-8601; not 'epoch', 'infinity')
        case
            when regexp_full_match(trim(ts), '[0-9]{9,10}') then to_timestamp(trim(ts)::bigint)
            when left(trim(ts), 1) between '0' and '9' then try_cast(trim(ts) as timestamptz)
        end as p_ts,
        nullif(trim(value), '') as value_text,
        try_cast(nullif(trim(value), '') as double) as p_value
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
            when p_item_id is null then ['item_id', 'item_id is empty']
            when length(p_item_id) > $max_id_length
                then ['item_id', 'item_id is longer than ' || $max_id_length || ' characters']
            when regexp_matches(p_item_id, '[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]')
                then ['item_id', 'item_id contains a control character']
            when length(p_event_id) > $max_id_length
                then ['event_id', 'event_id is longer than ' || $max_id_length || ' characters']
            when regexp_matches(p_event_id, '[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]')
                then ['event_id', 'event_id contains a control character']
            when p_event_type is null or not list_contains($event_types, p_event_type)
                then ['event_type', 'unknown event_type '
                    || coalesce('''' || left(event_type, 100) || '''', 'null')
                    || ' (expected one of ' || array_to_string($event_types, ', ') || ')']
            when p_ts is null
                then ['ts', 'ts ' || coalesce('''' || left(ts, 100) || '''', 'null')
                    || ' is not an ISO-8601 timestamp or epoch seconds']
            when not isfinite(p_ts) or p_ts < $min_ts or p_ts > $max_ts
                then ['ts', 'ts ''' || left(ts, 100) || ''' is outside the valid range '
                    || strftime($min_ts, '%Y-%m-%d %H:%M') || ' .. '
                    || strftime($max_ts, '%Y-%m-%d %H:%M') || ' UTC']
            when value_text is not null and p_value is null
                then ['value', 'value ''' || left(value, 100) || ''' is not a number']
            when not isfinite(p_value) or abs(p_value) > $max_abs_value
                then ['value', 'value ''' || left(value, 100) || ''' is not a finite number within '
                    || '-' || $max_abs_value || ' .. ' || $max_abs_value]
        end as problem
    from parsed
)

-- only what the later steps read: the raw text stays in `staging` (rejected rows' _raw)
select
    _row,
    p_user_id,
    p_item_id,
    p_event_type,
    p_ts,
    p_value,
    problem[1] as bad_field,
    problem[2] as reason,
    -- a line break in a one-line field of a CSV record: a quote left open joined lines.
    -- Of a good row only ts and value can hold one (an id or event_type with one fails)
    coalesce(case
        when problem is null then contains(ts, chr(10)) or contains(ts, chr(13))
            or contains(value, chr(10)) or contains(value, chr(13))
        else contains(concat_ws(' ', event_id, user_id, item_id, event_type, ts, value), chr(10))
            or contains(concat_ws(' ', event_id, user_id, item_id, event_type, ts, value), chr(13))
    end, false) as p_line_break,
    coalesce(
        p_event_id,
        sha256(concat_ws('|', p_user_id, p_item_id, p_event_type,
            strftime(p_ts, '%Y-%m-%dT%H:%M:%S.%f'), coalesce(p_value::varchar, '')))
    ) as p_key
from problems
