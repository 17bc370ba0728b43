-- Read a Parquet file into `landed` under DuckDB's memory cap: the file's columns, with
-- their own names and types, inside `_rec`; rows in file order (rowid + 1 is the row).
create temp table landed as
select t as _rec
from read_parquet($path) as t
