-- Upsert the good item rows of one file: the last row of an item wins inside the file,
-- and a row replaces the stored item unless the stored one is newer by updated_at.
insert into items
with good as (
    select * from checked where bad_field is null
),

latest as (
    select * from good
    qualify row_number() over (
        partition by p_key order by p_updated_at desc nulls last, _row desc
    ) = 1
),

final as (
    select
        p_key as item_id,
        coalesce(trim(title), '') as title,
        nullif(trim(description), '') as description,
        nullif(trim(category), '') as category,
        nullif(trim(brand), '') as brand,
        nullif(trim(tags), '') as tags,
        p_active as active,
        p_updated_at as updated_at,
        -- the text the language model reads; its hash keys the embedding cache
        concat_ws(
            '. ', nullif(trim(title), ''), nullif(trim(category), ''), nullif(trim(brand), ''),
            nullif(replace(trim(tags), ';', ', '), ''), nullif(trim(description), '')
        ) as item_text,
        $source_file as source_file
    from latest
)

select
    item_id, title, description, category, brand, tags, active, updated_at,
    item_text, sha256(item_text) as text_hash, source_file
from final
on conflict (item_id) do update set
    title = excluded.title,
    description = excluded.description,
    category = excluded.category,
    brand = excluded.brand,
    tags = excluded.tags,
    active = excluded.active,
    updated_at = excluded.updated_at,
    item_text = excluded.item_text,
    text_hash = excluded.text_hash,
    source_file = excluded.source_file
where excluded.updated_at is null
    or items.updated_at is null
    or excluded.updated_at >= items.updated_at
