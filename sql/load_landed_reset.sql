-- Drop the working tables of the previous file; `broken` starts empty. `landed` holds the
-- records of one file, `broken` those that could not be split into its columns.
drop view if exists first_of_key;
drop view if exists staging;
drop table if exists checked;
drop table if exists landed;
drop table if exists broken;
create temp table broken (_row bigint, field varchar, reason varchar, raw varchar);
