-- Rows a Parquet file holds by its footer: the rows in of its books.
select num_rows
from parquet_file_metadata($path)
