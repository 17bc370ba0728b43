-- Forget one run's evaluation figures before they are written again (same transaction).
delete from eval_metrics
where run_id = $run_id
