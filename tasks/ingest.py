"""Ingest landing files (CSV, Parquet, JSON lines) into the DuckDB warehouse.

Layout of the landing folder: ``items/``, ``users/`` and ``events/``, each holding any
number of files; they load in that order, files by name. Every file is read as text,
validated in SQL (``sql/check_<kind>.sql``), and loaded in one transaction: good rows
into their table, bad rows into ``rejected_rows`` with file, row number, field and
reason. A file whose checksum was ingested before is skipped; duplicate events are
dropped; items are upserted.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from nightrec import db
from nightrec.config import EVENT_TYPES, ContractError, Settings
from nightrec.registry import sha256

log = logging.getLogger(__name__)

KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required columns, optional columns)
    "items": (
        ("item_id", "title"),
        ("description", "category", "brand", "tags", "active", "updated_at"),
    ),
    "users": (("user_id",), ("created_at",)),
    "events": (("user_id", "item_id", "event_type", "ts"), ("event_id", "value")),
}
LOADERS = {"items": "upsert_items", "users": "load_users", "events": "load_events"}
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class FileResult:
    path: str
    kind: str
    rows: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped: bool = False


@dataclass
class IngestResult:
    files: list[FileResult] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        new = [f for f in self.files if not f.skipped]
        return {
            "files_new": len(new),
            "files_skipped": len(self.files) - len(new),
            "rows": sum(f.rows for f in new),
            "loaded": sum(f.loaded for f in new),
            "rejected": sum(f.rejected for f in new),
            "duplicates": sum(f.duplicates for f in new),
        }


class UnreadableFile(Exception):
    """The file cannot be parsed at all; it is recorded as one rejected row."""


def _as_text(df: pl.DataFrame) -> pl.DataFrame:
    """Every column as text, timestamps in ISO-8601, so one SQL check serves all formats."""
    cols = []
    for name, dtype in df.schema.items():
        c = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%z" if dtype.time_zone else "")
            cols.append(c.dt.to_string(fmt).alias(name))
        elif dtype == pl.Utf8:
            cols.append(c)
        elif dtype.is_nested():
            cols.append(c.map_elements(json.dumps, return_dtype=pl.Utf8).alias(name))
        else:
            cols.append(c.cast(pl.Utf8).alias(name))
    return df.select(cols)


Broken = list[tuple[int | None, str | None, str, str | None]]  # row, field, reason, raw


def read_rows(path: Path, fmt: str) -> tuple[pl.DataFrame, Broken]:
    """Read a file as text columns with a 1-based ``_row``.

    Returns the frame and the rows that could not even be split into fields
    (row number, field, reason, raw text). The fast readers are tried first; on a malformed
    file the slow line-by-line reader finds the bad lines and keeps the good ones.
    """
    broken: Broken = []
    try:
        if fmt == "csv":
            df = pl.read_csv(path, infer_schema=False)
        elif fmt == "parquet":
            df = _as_text(pl.read_parquet(path))
        else:
            df = _as_text(pl.read_ndjson(path, infer_schema_length=None))
    except (pl.exceptions.ComputeError, pl.exceptions.PolarsError, OSError, ValueError) as exc:
        if fmt == "parquet":
            raise UnreadableFile(f"not a readable Parquet file: {exc}") from exc
        log.warning("%s: fast reader failed (%s); reading line by line", path, exc)
        df, broken = (_read_csv_slow if fmt == "csv" else _read_jsonl_slow)(path)
        return df, broken
    return df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64)), broken


def _read_csv_slow(path: Path) -> tuple[pl.DataFrame, Broken]:
    rows: list[list[str | None]] = []
    numbers: list[int] = []
    broken: Broken = []
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise UnreadableFile("empty CSV file (no header)")
        for n, rec in enumerate(reader, start=1):
            if len(rec) != len(header):
                broken.append(
                    (n, None, f"expected {len(header)} fields, got {len(rec)}", json.dumps(rec))
                )
            else:
                numbers.append(n)
                rows.append([v if v != "" else None for v in rec])
    df = pl.DataFrame(rows, schema={h: pl.Utf8 for h in header}, orient="row")
    return df.with_columns(pl.Series("_row", numbers, dtype=pl.Int64)), broken


def _read_jsonl_slow(path: Path) -> tuple[pl.DataFrame, Broken]:
    rows: list[dict] = []
    broken: Broken = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                broken.append((n, None, f"malformed JSON: {exc}", line.rstrip("\n")))
                continue
            rows.append(
                {
                    "_row": n,
                    **{
                        k: None if v is None else (v if isinstance(v, str) else json.dumps(v))
                        for k, v in obj.items()
                    },
                }
            )
    df = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame({"_row": []})
    return _as_text(df.drop("_row")).with_columns(df["_row"].cast(pl.Int64)), broken


def ingest_file(con: duckdb.DuckDBPyConnection, path: Path, kind: str, checksum: str) -> FileResult:
    """Validate and load one file in one transaction."""
    required, optional = KINDS[kind]
    res = FileResult(str(path), kind)
    now = dt.datetime.now(dt.UTC)
    base = {"kind": kind, "source_file": str(path), "checksum": checksum}
    try:
        df, broken = read_rows(path, SUFFIXES[path.suffix.lower()])
    except UnreadableFile as exc:
        df, broken = (
            pl.DataFrame({"_row": []}, schema={"_row": pl.Int64}),
            [(None, None, str(exc), None)],
        )
    missing = [c for c in required if c not in df.columns]
    if missing and df.height:
        # a file without a required column: every row is kept as rejected, none loaded
        why = f"missing required column {missing[0]!r}"
        raw = df.drop("_row").select(pl.struct(pl.all()).struct.json_encode())[:, 0]
        broken += [(r, missing[0], why, j) for r, j in zip(df["_row"], raw, strict=True)]
        df = df.head(0)
    for col in (*required, *optional):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias(col))
    res.rows = df.height + len(broken)

    con.execute("begin")
    try:
        con.register("staging", df)
        con.execute(
            f"create or replace temp table checked as {db.sql('check_' + kind)}",
            {"event_types": list(EVENT_TYPES)} if kind == "events" else {},
        )
        res.rejected = db.one(con, "select count(*) from checked where bad_field is not null")[0]
        db.run(con, "reject_rows", {**base, "now": now})
        if broken:
            con.executemany(
                "insert into rejected_rows values ($1, $2, $3, $4, $5, $6, $7, $8)",
                [(kind, str(path), checksum, r, col, why, raw, now) for r, col, why, raw in broken],
            )
            res.rejected += len(broken)
        good = res.rows - res.rejected
        table = kind  # a key of KINDS, never user input
        before = db.one(con, f"select count(*) from {table}")[0]
        db.run(con, LOADERS[kind], {"source_file": str(path)})
        after = db.one(con, f"select count(*) from {table}")[0]
        if kind == "items":  # an upsert: count the distinct items the file carried
            res.loaded = db.one(
                con, "select count(distinct p_key) from checked where bad_field is null"
            )[0]
        else:
            res.loaded = after - before
        res.duplicates = good - res.loaded
        con.execute(
            "insert into ingested_files values ($1, $2, $3, $4, $5, $6, $7, $8)",
            [kind, checksum, str(path), res.rows, res.loaded, res.rejected, res.duplicates, now],
        )
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.unregister("staging")
    return res


def landing_files(landing: Path) -> list[tuple[str, Path]]:
    """(kind, path) of every landing file in load order; warns about files it cannot read."""
    if not landing.is_dir():
        raise ContractError(f"landing folder {landing} does not exist")
    found = []
    for kind in KINDS:
        folder = landing / kind
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.name.startswith(".") or path.name.endswith(".tmp") or not path.is_file():
                continue  # hidden or still being written
            if path.suffix.lower() not in SUFFIXES:
                log.warning("ingest: %s has an unknown extension; not loaded", path)
                continue
            found.append((kind, path))
    return found


def ingest(settings: Settings, landing: Path | None = None) -> IngestResult:
    """Load every new landing file into the warehouse. Re-running loads nothing twice."""
    started = time.perf_counter()
    landing = (landing or settings.landing).resolve()
    result = IngestResult()
    with db.connect(settings.warehouse) as con:
        seen = {
            tuple(r) for r in con.execute("select kind, checksum from ingested_files").fetchall()
        }
        for kind, path in landing_files(landing):
            checksum = sha256(path)
            if (kind, checksum) in seen:
                result.files.append(FileResult(str(path), kind, skipped=True))
                log.info("ingest: %s already ingested (sha256 %s…); skipped", path, checksum[:12])
                continue
            t = time.perf_counter()
            res = ingest_file(con, path, kind, checksum)
            seen.add((kind, checksum))
            result.files.append(res)
            log.info(
                "ingest: %s (%s): %d rows, %d loaded, %d rejected, %d duplicate, %.1fs",
                path.name,
                kind,
                res.rows,
                res.loaded,
                res.rejected,
                res.duplicates,
                time.perf_counter() - t,
            )
            if res.rejected:
                log.warning(
                    "ingest: %d rows of %s rejected; see table rejected_rows", res.rejected, path
                )
    tot = result.totals
    log.info(
        "ingest: %d new files (%d skipped), %d rows, %d loaded, %d rejected, %d duplicate in %.1fs",
        tot["files_new"],
        tot["files_skipped"],
        tot["rows"],
        tot["loaded"],
        tot["rejected"],
        tot["duplicates"],
        time.perf_counter() - started,
    )
    return result
