-- The published recommendations of one run: the scored Parquet parts, in shard and
-- part order (each part lists its users in user_id order), copied in one pass.
copy (
    select
        user_id,
        rank,
        item_id,
        score,
        reason,
        because_item_id,
        $model_version as model_version,
        $run_id as run_id,
        $generated_at::timestamptz as generated_at
    from read_parquet($parts)
) to $path (format parquet)
