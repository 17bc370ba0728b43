"""DuckDB connections and SQL files."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from nightrec.config import SQL_DIR


@functools.cache
def sql(name: str) -> str:
    """The text of ``sql/<name>.sql``."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"missing SQL file {path}")
    return path.read_text()


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with UTC session time; the warehouse schema is applied on write.

    DuckDB's memory is capped (``NIGHTREC_DUCKDB_MEMORY``, default 4GB); big sorts and
    joins spill to ``<file>.tmp/`` instead of taking most of the machine's RAM.
    """
    if read_only and not path.exists():
        raise FileNotFoundError(f"DuckDB file {path} does not exist (run `nightrec ingest` first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("set TimeZone = 'UTC'")
    con.execute("set memory_limit = $m", {"m": os.environ.get("NIGHTREC_DUCKDB_MEMORY", "4GB")})
    if not read_only:
        con.execute(sql("schema"))
    return con


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
