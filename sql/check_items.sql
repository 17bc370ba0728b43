-- Validate staged item rows (all varchar); bad_field is null for good rows. Only the
-- contract's columns are read; bounds are parameters (IngestConfig). Text fields may hold
-- tabs and line breaks but no other control characters, and at most $max_text_length
-- characters.
with staged as (
    select _row, item_id, title, description, category, brand, tags, active, updated_at
    from staging
),

parsed as (
    select
        _row,
        item_id,
        title,
        description,
        category,
        brand,
        tags,
        active,
        updated_at,
        nullif(trim(item_id), '') as p_item_id,
        case
            when nullif(trim(active), '') is null then true
            when lower(trim(active)) in ('true', 't', '1', 'yes', 'y') then true
            when lower(trim(active)) in ('false', 'f', '0', 'no', 'n') then false
        end as p_active,
        nullif(trim(updated_at), '') as updated_text,
        case
            when left(trim(updated_at), 1) between '0' and '9'
                then try_cast(trim(updated_at) as timestamptz)
        end as p_updated_at,
        -- the first text field that breaks the text rules, if any
        [x for x in [
            if(length(title) > $max_text_length
                or regexp_matches(title, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]'), 'title', null),
            if(length(description) > $max_text_length
                or regexp_matches(description, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]'),
                'description', null),
            if(length(category) > $max_text_length
                or regexp_matches(category, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]'), 'category', null),
            if(length(brand) > $max_text_length
                or regexp_matches(brand, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]'), 'brand', null),
            if(length(tags) > $max_text_length
                or regexp_matches(tags, '[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]'), 'tags', null)
        ] if x is not null][1] as bad_text
    from staged
),

problems as (
    select
        *,
        case
            when $file_field is not null then [$file_field, $file_reason]
            when p_item_id is null then ['item_id', 'item_id is empty']
            when length(p_item_id) > $max_id_length
                then ['item_id', 'item_id is longer than ' || $max_id_length || ' characters']
            when regexp_matches(p_item_id, '[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]')
                then ['item_id', 'item_id contains a control character']
            when bad_text is not null
                then [bad_text, bad_text || ' is longer than ' || $max_text_length
                    || ' characters or contains a control character']
            when p_active is null
                then ['active', 'active ''' || left(active, 100) || ''' is not a boolean']
            when updated_text is not null and p_updated_at is null
                then ['updated_at', 'updated_at ''' || left(updated_at, 100)
                    || ''' is not an ISO-8601 timestamp']
            when not isfinite(p_updated_at) or p_updated_at < $min_ts or p_updated_at > $max_ts
                then ['updated_at', 'updated_at ''' || left(updated_at, 100)
                    || ''' is outside the valid range '
                    || strftime($min_ts, '%Y-%m-%d %H:%M') || ' .. '
                    || strftime($max_ts, '%Y-%m-%d %H:%M') || ' UTC']
        end as problem
    from parsed
)

select
    _row,
    item_id,
    title,
    description,
    category,
    brand,
    tags,
    active,
    updated_at,
    p_item_id,
    p_active,
    p_updated_at,
    problem[1] as bad_field,
    problem[2] as reason,
    -- text fields may span lines; these may not (in CSV: a quote left open joined lines)
    contains(concat_ws(' ', item_id, active, updated_at), chr(10))
        or contains(concat_ws(' ', item_id, active, updated_at), chr(13)) as p_line_break,
    p_item_id as p_key
from problems
