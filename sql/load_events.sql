-- Append the good event rows of one file; an event already loaded (same id, or same
-- content when the file has no ids) is dropped, as is a repeat inside the file.
insert into events
with good as (
    select * from checked where bad_field is null
),

first_of_key as (
    select * from good
    qualify row_number() over (partition by p_key order by _row) = 1
)

select p_key, p_user_id, p_item_id, p_event_type, p_value, p_ts, $source_file
from first_of_key
where not exists (select 1 from events e where e.event_id = first_of_key.p_key)
