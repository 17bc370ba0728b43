-- The good event rows of one file, the first row of each key (event id, or the row's
-- content when the file has no ids): a repeat inside the file is a duplicate.
create or replace temp view first_of_key as
select * from checked
where bad_field is null
qualify row_number() over (partition by p_key order by _row) = 1
