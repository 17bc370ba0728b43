-- Read a Parquet file into `landed` under DuckDB's memory cap: the file's columns, with
-- their own names and types, inside `_rec`; rows in file order (rowid + 1 is the row).
-- {row}: the alias of the whole row, set by landing_read.load_sql (see load_landed_csv.sql).
create temp table landed as
select {row} as _rec
from read_parquet($path) as {row}
