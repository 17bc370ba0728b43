-- The books of one file before it commits: every record read is loaded, rejected or a
-- duplicate. Returns one line per identity that does not hold; empty means they balance.
with checked_rows as (
    select
        count(*) as n,
        count(*) filter (where bad_field is null) as good
    from checked
),

broken_rows as (
    select count(*) as n from broken
),

rejected as (
    select count(*) as n
    from rejected_rows
    where kind = $kind and checksum = $checksum
),

books as (
    select
        $rows_in::bigint as rows_in,
        c.n as checked,
        c.good,
        b.n as broken,
        r.n as rejected,
        $loaded::bigint as loaded
    from checked_rows as c, broken_rows as b, rejected as r
)

select 'rows in ' || rows_in || ' <> rows checked ' || checked || ' + rows unsplit ' || broken
    as problem
from books
where checked + broken <> rows_in
union all
select 'rejected_rows holds ' || rejected || ' rows of the file, expected '
    || (checked - good + broken)
from books
where rejected <> checked - good + broken
union all
select 'loaded ' || loaded || ' rows of ' || good || ' good ones'
from books
where loaded < 0 or loaded > good
