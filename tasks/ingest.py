"""Ingest landing files (CSV, Parquet, JSON lines) into the DuckDB warehouse.

Layout of the landing folder: ``items/``, ``users/`` and ``events/``, each holding any
number of files; they load in that order, files by name (``nightrec.landing`` says which
files are read and how). Every file is validated in SQL (``sql/check_<kind>.sql``) against
the bounds of ``IngestConfig`` and loaded in one transaction: good rows into their table,
bad rows into ``rejected_rows`` with file, row number, field, reason and the raw row. Only
the contract's columns are read; others are ignored (logged once per file) and kept only in
the raw text of rejected rows.

Every file's books must balance before it commits: rows in = loaded + rejected +
duplicates, counted from the warehouse tables. A file that fails for any reason (it cannot
be read row by row, its books do not balance, a bug) is rolled back, recorded in
``quarantined_files`` with its reason, logged at WARNING, and ingest goes on with the next
file. A quarantined file is not read again while its checksum is unchanged (fix it and
deliver it again); one that failed for a reason outside the file (out of memory, an
unexpected error) is tried again on the next run. A full disk stops the run.

A file whose checksum was ingested before is skipped; duplicate events are dropped; items
are upserted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from nightrec import db, errors
from nightrec.config import EVENT_TYPES, IngestConfig, Settings
from nightrec.landing import (
    KINDS,
    Candidate,
    FileRejected,
    Identity,
    TryAgain,
    checksum,
    identity,
    landing_files,
    show,
)
from nightrec.landing_csv import read_csv
from nightrec.landing_read import Landed, check_start, read_jsonl, read_parquet

__all__ = ["KINDS", "FileResult", "IngestResult", "ingest", "ingest_file", "read_file"]

log = logging.getLogger(__name__)

LOADERS = {"items": "upsert_items", "users": "load_users", "events": "load_events"}
# faults of the machine: every later file would fail the same way, so the run stops
_STOP = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@dataclass
class FileResult:
    path: str
    kind: str
    rows: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    skipped: bool = False
    quarantined: bool = False
    reason: str | None = None  # why it was quarantined, or skipped


@dataclass
class IngestResult:
    files: list[FileResult] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why) never read

    @property
    def totals(self) -> dict[str, int]:
        new = [f for f in self.files if not f.skipped and not f.quarantined]
        return {
            "files_new": len(new),
            "files_skipped": sum(f.skipped for f in self.files),
            "rows": sum(f.rows for f in new),
            "loaded": sum(f.loaded for f in new),
            "rejected": sum(f.rejected for f in new),
            "duplicates": sum(f.duplicates for f in new),
            "files_quarantined": sum(f.quarantined for f in self.files),
            "files_refused": len(self.refused),
        }


def _check_params(kind: str, cfg: IngestConfig, problem: tuple[str, str] | None) -> dict:
    min_ts, max_ts = cfg.ts_bounds()
    params = {
        "file_field": problem[0] if problem else None,
        "file_reason": problem[1] if problem else None,
        "max_id_length": cfg.max_id_length,
    }
    if kind == "events":
        params.update(event_types=list(EVENT_TYPES), max_abs_value=cfg.max_abs_value)
    if kind == "items":
        params["max_text_length"] = cfg.max_text_length
    return {**params, "min_ts": min_ts, "max_ts": max_ts}


def read_file(con: duckdb.DuckDBPyConnection, cand: Candidate, cfg: IngestConfig) -> Landed:
    """Read one landing file into the temp tables ``landed`` and ``broken``."""
    check_start(con, cand)
    if cand.fmt == "parquet":
        return read_parquet(con, cand, cfg)
    if cand.fmt == "jsonl":
        return read_jsonl(con, cand, cfg)
    return read_csv(con, cand, cfg)


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    cand: Candidate,
    digest: str,
    cfg: IngestConfig,
    hashed: Identity | None = None,
) -> FileResult:
    """Read, validate and load one file in one transaction; raises if it must be quarantined.

    ``hashed``: the file's identity when ``digest`` was computed; the file must still have
    it after reading, or the rows read might not be the bytes hashed.
    """
    kind, source = cand.kind, str(cand.path)
    res = FileResult(source, kind)
    landed = read_file(con, cand, cfg)
    if hashed is not None and identity(cand.real) != hashed:
        raise TryAgain("the file changed while it was read (still being written?)")
    required, _ = KINDS[kind]
    missing = [c for c in required if c not in landed.positions]
    if missing and cand.fmt != "jsonl":  # a JSON line names its fields itself
        landed.problem = (missing[0], f"missing required column {missing[0]!r}")
    if landed.unknown:
        log.info(
            "ingest: %s: ignored columns not in the %s contract: %s",
            show(cand.path),
            kind,
            ", ".join(repr(c) for c in landed.unknown[:20]),
        )
    now = dt.datetime.now(dt.UTC)
    con.execute("begin")
    try:
        con.execute(landed.staging_sql(kind))
        con.execute(
            f"create temp table checked as {db.sql('check_' + kind)}",
            _check_params(kind, cfg, landed.problem),
        )
        if cand.fmt == "csv":
            joined = db.one(con, "select min(_row) from checked where p_line_break")[0]
            if joined is not None:
                raise FileRejected(
                    f"record {joined} has a line break in a field that holds one line: a quote "
                    "left open joins lines, so the rows cannot be told apart; fix the quoting"
                )
        db.run(
            con,
            "reject_rows",
            {"kind": kind, "source_file": source, "checksum": digest, "now": now},
        )
        good, keys = db.one(
            con,
            "select count(*), count(distinct p_key) from checked where bad_field is null",
        )
        table = kind  # a key of KINDS, never user input
        before = db.one(con, f"select count(*) from {table}")[0]
        if kind == "events":  # most files repeat no key: then no window over them
            db.run(con, "events_all_keys_new" if keys == good else "events_first_of_key")
        db.run(con, LOADERS[kind], {"source_file": source})
        if kind == "items":  # an upsert: count the distinct items the file carried
            res.loaded = keys
        else:
            res.loaded = db.one(con, f"select count(*) from {table}")[0] - before
        books = {"kind": kind, "checksum": digest, "rows_in": landed.rows_in, "loaded": res.loaded}
        problems = [r[0] for r in con.execute(db.sql("check_books"), books).fetchall()]
        if problems:
            raise FileRejected("the books do not balance: " + "; ".join(problems))
        res.rows = landed.rows_in
        res.rejected = db.one(
            con,
            "select count(*) from rejected_rows where kind = $kind and checksum = $checksum",
            {"kind": kind, "checksum": digest},
        )[0]
        res.duplicates = good - res.loaded
        con.execute(
            "insert into ingested_files values ($1, $2, $3, $4, $5, $6, $7, $8)",
            [kind, digest, source, res.rows, res.loaded, res.rejected, res.duplicates, now],
        )
        # a file that failed before for a passing reason and now loads is no longer quarantined
        con.execute(
            "delete from quarantined_files where kind = $1 and checksum = $2", [kind, digest]
        )
        con.execute("commit")
    except BaseException:
        errors.rollback_quietly(con)
        raise
    return res


def _quarantine(
    con: duckdb.DuckDBPyConnection, cand: Candidate, digest: str, reason: str, retry: bool
) -> None:
    con.execute(
        "insert into quarantined_files values ($1, $2, $3, $4, $5, 1, $6) "
        "on conflict (kind, checksum) do update set file_path = excluded.file_path, "
        "reason = excluded.reason, retry = excluded.retry, attempts = attempts + 1, "
        "quarantined_at = excluded.quarantined_at",
        [cand.kind, digest, str(cand.path), reason, retry, dt.datetime.now(dt.UTC)],
    )


def _stops_the_run(exc: BaseException) -> bool:
    """A full disk, a quota, a read-only warehouse: every later file would fail alike.

    Only I/O errors count: the text of any other error may quote the file's content.
    """
    # DuckDB reports a failed write of its own files as an I/O, fatal or commit error
    if not isinstance(
        exc, OSError | duckdb.IOException | duckdb.FatalException | duckdb.TransactionException
    ):
        return False
    found = errors.classify(exc)
    return found is not None and found[0] in _STOP


def ingest(
    settings: Settings, landing: Path | None = None, config: IngestConfig | None = None
) -> IngestResult:
    """Load every new landing file into the warehouse. Re-running loads nothing twice.

    One file failing never stops the others: it is quarantined (see the module docstring)
    and counted in ``totals["files_quarantined"]``.
    """
    started = time.perf_counter()
    landing = (landing or settings.landing).resolve()
    # one "now" for the whole run: every file is held to the same timestamp ceiling
    cfg = config or IngestConfig()
    if cfg.now is None:
        cfg = dataclasses.replace(cfg, now=dt.datetime.now(dt.UTC))
    found = landing_files(landing)
    result = IngestResult(refused=found.refused)
    with db.connect(settings.warehouse) as con:
        con.execute("set enable_progress_bar = false")  # DuckDB would draw it on stdout
        # no step below needs insertion order (rows carry _row); whole-file reads turn it on
        con.execute("set preserve_insertion_order = false")
        seen = {
            tuple(r) for r in con.execute("select kind, checksum from ingested_files").fetchall()
        }
        held = dict(
            ((k, c), why)
            for k, c, why in con.execute(
                "select kind, checksum, reason from quarantined_files where not retry"
            ).fetchall()
        )
        for cand in found.files:
            t = time.perf_counter()
            try:
                digest, hashed = checksum(cand.real)
            except (OSError, FileRejected) as exc:
                result.refused.append((show(cand.path), f"cannot be read: {exc}"))
                log.warning("ingest: refused %s: cannot be read (%s)", show(cand.path), exc)
                continue
            key = (cand.kind, digest)
            if key in seen or key in held:
                why = "already ingested" if key in seen else f"quarantined before: {held[key]}"
                result.files.append(FileResult(str(cand.path), cand.kind, skipped=True, reason=why))
                log.info("ingest: %s skipped: %s (sha256 %s…)", show(cand.path), why, digest[:12])
                continue
            try:
                res = ingest_file(con, cand, digest, cfg, hashed)
            except Exception as exc:
                if _stops_the_run(exc):
                    raise
                retry = not isinstance(exc, FileRejected)
                known = isinstance(exc, FileRejected | TryAgain)
                reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
                _quarantine(con, cand, digest, reason[:2000], retry)
                if not retry:
                    held[key] = reason
                result.files.append(
                    FileResult(str(cand.path), cand.kind, quarantined=True, reason=reason)
                )
                log.warning(
                    "ingest: quarantined %s (%s): %s%s",
                    show(cand.path),
                    cand.kind,
                    show(reason[:500]),
                    "; it is tried again next run" if retry else "; fix it and deliver it again",
                    exc_info=not known,  # an unexpected error: keep its traceback
                )
                continue
            finally:
                con.execute(db.sql("load_landed_reset"))
            seen.add(key)
            result.files.append(res)
            log.info(
                "ingest: %s (%s): %d rows, %d loaded, %d rejected, %d duplicate, %.1fs",
                show(cand.path),
                cand.kind,
                res.rows,
                res.loaded,
                res.rejected,
                res.duplicates,
                time.perf_counter() - t,
            )
            if res.rejected:
                log.warning(
                    "ingest: %d rows of %s rejected; see table rejected_rows",
                    res.rejected,
                    show(cand.path),
                )
    tot = result.totals
    log.info(
        "ingest: %d new files (%d skipped, %d quarantined, %d refused), %d rows, %d loaded, "
        "%d rejected, %d duplicate in %.1fs",
        tot["files_new"],
        tot["files_skipped"],
        tot["files_quarantined"],
        tot["files_refused"],
        tot["rows"],
        tot["loaded"],
        tot["rejected"],
        tot["duplicates"],
        time.perf_counter() - started,
    )
    if tot["files_quarantined"]:
        log.warning(
            "ingest: %d files quarantined; see table quarantined_files", tot["files_quarantined"]
        )
    return result
