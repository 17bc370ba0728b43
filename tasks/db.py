"""DuckDB connections and SQL files."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from nightrec.config import SQL_DIR, env_seconds

log = logging.getLogger(__name__)

# How long a step waits for another process's lock on a DuckDB file before failing with
# a message that names the holder. Short on purpose: the warehouse is shared only with
# nightrec's own steps (one-slot pool); outside readers belong on the serving exports.
LOCK_WAIT_S = 60.0


def lock_wait_s() -> float:
    return env_seconds("NIGHTREC_LOCK_WAIT_S", LOCK_WAIT_S, 86_400.0, lo_open=False)


_HOLDER = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


class Busy(RuntimeError):
    """Another process holds the DuckDB file's lock past the bounded wait."""


def _holder(message: str) -> str:
    m = _HOLDER.search(message)
    if not m:
        return "another process"
    cmd = ""
    try:
        with open(f"/proc/{m.group(2)}/cmdline", "rb") as fh:
            cmd = " ".join(fh.read().replace(b"\0", b" ").decode(errors="replace").split())[:200]
    except OSError:
        pass
    return f"PID {m.group(2)} ({cmd or m.group(1)})"


@functools.cache
def sql(name: str) -> str:
    """The text of ``sql/<name>.sql``."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"missing SQL file {path}")
    return path.read_text()


def connect(path: Path, read_only: bool = False, schema: bool = True) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with UTC session time; the warehouse schema is applied on write
    unless ``schema`` is off (serving files are not warehouses).

    DuckDB's memory is capped (``NIGHTREC_DUCKDB_MEMORY``, default 4GB); big sorts and
    joins spill to ``<file>.tmp/`` instead of taking most of the machine's RAM.
    """
    if read_only and not path.exists():
        raise FileNotFoundError(f"DuckDB file {path} does not exist (run `nightrec ingest` first)")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    con = _open_waiting(path, read_only)
    if not read_only and schema:  # the warehouse keeps raw rejected rows: owner-only always
        os.chmod(path, 0o600)
    con.execute("set TimeZone = 'UTC'")
    con.execute("set enable_progress_bar = false")  # no bars drawn into task logs
    con.execute("set memory_limit = $m", {"m": os.environ.get("NIGHTREC_DUCKDB_MEMORY", "4GB")})
    if not read_only and schema:
        con.execute(sql("schema"))
    return con


def _open_waiting(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect``, waiting up to ``NIGHTREC_LOCK_WAIT_S`` for another process's lock.

    DuckDB lets one process write a file, or many read it, never both. A lock conflict is
    retried with a short backoff and logged with the holder's PID and command line; past
    the wait it fails with an error that names the holder (no 2-minute task retry).
    """
    wait = lock_wait_s()
    deadline = time.monotonic() + wait
    delay, warned = 0.1, False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "Could not set lock" not in str(exc):
                raise
            holder = _holder(str(exc))
            if time.monotonic() >= deadline:
                raise Busy(
                    f"{path} is locked by {holder} for more than {wait:.0f}s "
                    "(NIGHTREC_LOCK_WAIT_S); outside readers should open the serving exports, "
                    "not the warehouse"
                ) from exc
            if not warned:
                log.warning("%s is locked by %s; waiting up to %.0fs", path.name, holder, wait)
                warned = True
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.01)))
            delay = min(delay * 2, 1.0)


def run(
    con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """Execute one statement from ``sql/<name>.sql`` with bound ``$name`` parameters."""
    return con.execute(sql(name), dict(params or {}))


def one(
    con: duckdb.DuckDBPyConnection, query: str, params: Mapping[str, Any] | None = None
) -> tuple[Any, ...]:
    """The single row a query must return."""
    row = con.execute(query, dict(params or {})).fetchone()
    if row is None:
        raise RuntimeError(f"query returned no row: {query[:80]}")
    return row


def record_metrics(
    con: duckdb.DuckDBPyConnection, run_id: str, step: str, metrics: Mapping[str, float]
) -> None:
    """Replace the metrics of one step of one run (idempotent per run and step)."""
    rows = [(run_id, step, k, float(v)) for k, v in metrics.items()]
    con.execute("begin")
    con.execute("delete from run_metrics where run_id = $1 and step = $2", [run_id, step])
    if rows:
        con.executemany("insert into run_metrics values ($1, $2, $3, $4)", rows)
    con.execute("commit")


def frame(
    con: duckdb.DuckDBPyConnection, query: str, params: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Run a query (text, or ``sql/<name>.sql`` when it is a bare name) into a Polars frame."""
    text = sql(query) if query.isidentifier() else query
    table = con.sql(text, params=dict(params or {})).to_arrow_table()
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out


_PATH_OK = re.compile(r"^[A-Za-z0-9_./@%+=,:~ -]+$")


def path_literal(paths: Path | list[Path]) -> str:
    """A SQL string literal (or list of them) for nightrec's own file paths.

    Only for statements DuckDB cannot prepare (view definitions). Paths with quotes,
    backslashes or control characters are refused rather than escaped.
    """
    items = paths if isinstance(paths, list) else [paths]
    for p in items:
        if not _PATH_OK.fullmatch(str(p)):
            raise ValueError(f"path {str(p)!r} has characters not allowed in a view definition")
    quoted = [f"'{p}'" for p in items]
    return quoted[0] if not isinstance(paths, list) else "[" + ", ".join(quoted) + "]"
