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
    row_number  bigint,                   -- 1-based data row (line = row + 1 for CSV with header)
    field       varchar,
    reason      varchar not null,
    raw         varchar,                  -- the row as JSON, so nothing is lost
    rejected_at timestamptz not null
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
