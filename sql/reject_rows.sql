-- Keep every row of one file that failed: rows that failed a check, with the raw row as
-- JSON (all of the file's columns, the ones ingest ignores included), and records that
-- could not be split into the file's columns (`broken`), with their raw text.
insert into rejected_rows (
    kind, source_file, checksum, row_number, field, reason, raw, rejected_at
)
with failed as (
    select _row, bad_field, reason
    from checked
    where bad_field is not null
),

failed_raw as (
    select f._row, f.bad_field, f.reason, s._raw
    from failed as f
    inner join staging as s on s._row = f._row
),

unsplit as (
    select _row, field as bad_field, reason, raw as _raw
    from broken
),

all_failed as (
    select * from failed_raw
    union all
    select * from unsplit
)

select $kind, $source_file, $checksum, _row, bad_field, reason, _raw, $now
from all_failed
