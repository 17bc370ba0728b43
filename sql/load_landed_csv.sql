-- Read a clean CSV file whole into `landed`, under DuckDB's memory cap: every field as
-- text, the file's own column names inside `_rec` (so they can never collide with ingest's
-- columns), rows in file order (insertion order is kept, so rowid + 1 is the row number).
-- Strict RFC 4180: anything irregular raises, and the file is then read row by row.
-- {row}: the alias of the whole row, set by landing_read.load_sql to a name that no
-- column of the file has (a column of that name would be read in the row's place).
create temp table landed as
select {row} as _rec
from read_csv(
    $path,
    columns = $columns,
    header = true,
    auto_detect = false,
    delim = ',',
    quote = '"',
    escape = '"',
    strict_mode = true,
    null_padding = false,
    ignore_errors = false,
    compression = 'none',
    encoding = 'utf-8',
    max_line_size = $max_line_size
) as {row}
