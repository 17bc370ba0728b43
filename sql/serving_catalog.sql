-- The reader-facing catalog serving/serving.duckdb, rebuilt at every publish and swapped
-- in by rename. Its views point at versioned files that never change once written, so a
-- reader who opened the catalog keeps a consistent view while newer versions are published.
-- DuckDB cannot bind parameters in a view definition: {live_parquet}, {live_items},
-- {all_parquet} and {live_similar} are made by db.path_literal (nightrec's own paths,
-- checked); {live_similar} is a query of no rows for versions published without it.
create or replace view recommendations as
select * from read_parquet({live_parquet});

create or replace view items as
select * from read_parquet({live_items});

create or replace view recommendations_all as
select * from read_parquet({all_parquet}, union_by_name = true);

create or replace view serving_info as
select run_id, as_of, model_version, serving_id, rows, users
from serving_versions
where live;

create or replace view similar_items as
select * from {live_similar};
