-- Keep every rejected row of one rule file, with the record as JSON: nothing is lost.
insert into rejected_rows (
    kind, source_file, checksum, row_number, field, reason, raw, rejected_at
)
with staged as (
    select * from rule_staging
),

failed as (
    select * from rule_failed
)

select $kind, $source_file, $checksum, f._row, f.field, f.reason, to_json(s), $now
from failed as f
inner join staged as s on s._row = f._row
order by f._row
