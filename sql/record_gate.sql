-- One row per run (a re-run of the gate replaces it).
insert or replace into gate_decisions
select $run_id, $candidate, $live_before, $passed, $forced, $promoted, $scored_with, $reason,
    $decided_at
