-- The catalog as the model sees it, ordered by id (row i + 1 is the model's item index).
with items_now as (
    select * from items
)

select item_id, title, category, active, item_text, text_hash
from items_now
order by item_id
