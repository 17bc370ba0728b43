-- One row per run (re-running the same run replaces it). served: whether this run's
-- version went live when it was published (a backfill of an older date does not).
insert or replace into runs (run_id, as_of, model_version, serving_id, provider, published_at, served)
select $run_id, $as_of::date, $model_version, $serving_id, $provider, $published_at, $served
