-- One row per run (re-running the same run replaces it).
insert or replace into runs
select $run_id, $as_of::date, $model_version, $serving_id, $provider, $published_at
