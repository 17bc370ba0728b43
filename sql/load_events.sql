-- Append the good event rows of one file (view `first_of_key`: one row per key, see
-- sql/events_first_of_key.sql); an event already loaded (same id, or same content when
-- the file has no ids) is dropped.
insert into events
select p_key, p_user_id, p_item_id, p_event_type, p_value, p_ts, $source_file
from first_of_key
where not exists (select 1 from events e where e.event_id = first_of_key.p_key)
