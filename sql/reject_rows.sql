-- Keep every row that failed validation, with its reason and the raw row as JSON.
insert into rejected_rows
select
    $kind as kind,
    $source_file as source_file,
    $checksum as checksum,
    c._row as row_number,
    c.bad_field as field,
    c.reason,
    to_json(s) as raw,
    $now as rejected_at
from checked as c
inner join staging as s on s._row = c._row
where c.bad_field is not null
