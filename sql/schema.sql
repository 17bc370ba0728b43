-- Warehouse schema. Idempotent: safe to run at the start of every step.
create table if not exists ingested_files (
    kind           varchar not null,      -- items | users | events
    checksum       varchar not null,      -- sha256 of the file bytes
    file_path      varchar not null,
    rows_total     bigint not null,
    rows_loaded    bigint not null,
    rows_rejected  bigint not null,
    rows_duplicate bigint not null,
    ingested_at    timestamptz not null,
    primary key (kind, checksum)
);

-- no primary key: uniqueness of event_id is kept by the anti-join in load_events.sql,
-- which stays fast at tens of millions of rows where an ART index would not
create table if not exists events (
    event_id    varchar not null,         -- given, or sha256 of the row's content
    user_id     varchar not null,
    item_id     varchar not null,
    event_type  varchar not null,
    value       double,
    ts          timestamptz not null,
    source_file varchar not null
);

create table if not exists items (
    item_id     varchar primary key,
    title       varchar not null,
    description varchar,
    category    varchar,
    brand       varchar,
    tags        varchar,
    active      boolean not null,
    updated_at  timestamptz,
    item_text   varchar not null,         -- the text the encoder reads (title, category, ...)
    text_hash   varchar not null,         -- sha256 of item_text
    source_file varchar not null
);

create table if not exists users (
    user_id     varchar not null,         -- unique by the anti-join in load_users.sql
    created_at  timestamptz,
    source_file varchar not null
);

create table if not exists rejected_rows (
    kind        varchar not null,
    source_file varchar not null,
    checksum    varchar not null,
    row_number  bigint,                   -- 1-based record: CSV after the header, JSONL non-blank line
    field       varchar,
    reason      varchar not null,
    raw         varchar,                  -- the row as JSON, so nothing is lost
    rejected_at timestamptz not null
);

-- files ingest could not take whole (unreadable, malformed quoting, books that do not
-- balance, ...): nothing of them is loaded. retry = false: skipped while the bytes are the
-- same (a fixed file has a new checksum); true: a failure of the machine or of ingest
-- itself, tried again on the next run. Delete a row to force a retry.
create table if not exists quarantined_files (
    kind           varchar not null,
    checksum       varchar not null,
    file_path      varchar not null,
    reason         varchar not null,
    retry          boolean not null,
    attempts       integer not null,
    quarantined_at timestamptz not null,
    primary key (kind, checksum)
);

create table if not exists item_text_embeddings (
    encoder    varchar not null,          -- fingerprint of the text model's weights
    text_hash  varchar not null,
    embedding  float[] not null,
    primary key (encoder, text_hash)
);

create table if not exists runs (
    run_id        varchar primary key,
    as_of         date not null,
    model_version varchar,
    serving_id    varchar,
    provider      varchar,
    published_at  timestamptz
);

create table if not exists run_metrics (
    run_id varchar not null,
    step   varchar not null,
    metric varchar not null,
    value  double,
    primary key (run_id, step, metric)
);

-- added after the first release: whether the run's serving version went live
alter table runs add column if not exists served boolean;

-- every figure of `nightrec evaluate`: one row per (run, protocol, split, model, metric,
-- K, slice); a run's rows are replaced together (eval_metrics_delete + _insert)
create table if not exists eval_metrics (
    run_id        varchar not null,
    as_of         date not null,          -- the snapshot's data date
    model_version varchar,                -- the candidate this run trained (baselines too)
    protocol      varchar not null,       -- loo | time
    split         varchar not null,       -- validation | test
    model         varchar not null,       -- nightrec | popular | item_knn | transition
    metric        varchar not null,       -- hr ndcg mrr precision f1 coverage diversity novelty users
    k             integer not null,       -- cut-off; 0 where the metric has none (users)
    slice         varchar not null,       -- all | cold_item | cold_user | short_history
    value         double,
    evaluated_at  timestamptz not null,
    primary key (run_id, protocol, split, model, metric, k, slice)
);

-- the promotion gate's decision per run: which candidate, what was live, why
create table if not exists gate_decisions (
    run_id       varchar primary key,
    candidate    varchar not null,        -- the model version this run trained
    live_before  varchar,                 -- models/current when the gate ran (null: none)
    passed       boolean not null,        -- beat the baselines and the live model's figure
    forced       boolean not null,        -- the promote Param
    promoted     boolean not null,        -- models/current now points at the candidate
    scored_with  varchar not null,        -- the version this run scores (candidate or live)
    reason       varchar not null,
    decided_at   timestamptz not null
);

-- business rules (`nightrec rules load --kind KIND FILE.csv`): one row per list entry; a
-- load replaces every row of its kind. The snapshot copies them (rules.parquet), and the
-- score step applies those that its RulesConfig turns on (tasks/rules.py).
create table if not exists rule_lists (
    kind        varchar not null,         -- exclude_items | exclude_user_items | include_items | consumables
    user_id     varchar,                  -- exclude_user_items: the user; include_items: null = global
    item_id     varchar,                  -- null only for a consumable category
    category    varchar,                  -- consumables: a whole category
    reason      varchar,                  -- free text (bought, hidden, recall, ...)
    source_file varchar not null,
    row_number  bigint not null,          -- 1-based record after the header
    loaded_at   timestamptz not null
);
