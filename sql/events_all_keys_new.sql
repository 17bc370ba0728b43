-- The good event rows of one file whose keys are all distinct (ingest counted them):
-- every row is the first of its key, so no window is needed to find them.
create or replace temp view first_of_key as
select * from checked
where bad_field is null
