"""Reading a CSV landing file into the ``landed`` tables (see ``nightrec.landing_read``).

Rows in: non-empty records after the header, by RFC 4180 (a record ends at ``\\n``,
``\\r\\n`` or ``\\r`` outside quotes; blank lines are not records). A clean file is
read whole by DuckDB under its memory cap (``sql/load_landed_csv.sql``) and checked
against ``count_csv_records``, an independent count of the raw bytes; a file DuckDB
refuses, or whose count disagrees, is read again record by record with Python's ``csv``
module in fixed-size batches: ragged records and bytes that are not UTF-8 in a contract
column become rejected rows with their reasons; malformed quoting (a quote still open at
the end, text after a closing quote, a record joined over lines with the wrong number of
fields) rejects the file whole.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from nightrec import db
from nightrec.config import IngestConfig
from nightrec.landing import KINDS, Candidate, FileRejected, open_regular, show
from nightrec.landing_read import (
    Batches,
    Landed,
    file_order,
    known_columns,
    load_sql,
    not_utf8,
    scalar,
    text_of,
)

log = logging.getLogger(__name__)


def count_csv_records(path: Path, block: int = 1 << 22) -> tuple[int, bool]:
    """(non-empty records, whether the file ends inside quotes), by RFC 4180 on the raw bytes.

    Independent of either CSV parser: every '"' toggles quoting, CR and LF outside quotes
    end a record, and a record is a run of other bytes. Vectorised; about 0.5 GB/s.
    """
    inside, prev_end, n = 0, True, 0
    with open_regular(path) as fh:
        while chunk := fh.read(block):
            a = np.frombuffer(chunk, np.uint8)
            end = (a == 10) | (a == 13)
            q = (a == 34).view(np.uint8)
            if inside or q.any():
                before = np.bitwise_xor.accumulate(q) ^ q ^ inside  # parity before each byte
                inside = int(before[-1] ^ q[-1])
                end &= before == 0
            rest = ~end
            n += int(np.count_nonzero(rest[1:] & end[:-1])) + int(rest[0] and prev_end)
            prev_end = bool(end[-1])
    return n, bool(inside)


def read_csv(con: duckdb.DuckDBPyConnection, cand: Candidate, cfg: IngestConfig) -> Landed:
    header = _check_header(csv_header(cand.real, cfg), cfg)
    positions, unknown = known_columns(cand.kind, header)
    records, open_quote = count_csv_records(cand.real)
    expected = max(records - 1, 0)
    if not open_quote:
        try:
            with file_order(con):
                con.execute(
                    load_sql("load_landed_csv", header),
                    {
                        "path": str(cand.real),
                        "columns": {name: "VARCHAR" for name in header},
                        "max_line_size": cfg.max_record_bytes,
                    },
                )
            got = scalar(con, "select count(*) from landed")
            if got == expected:
                return Landed(expected, header, positions, "rowid + 1", unknown=unknown)
            log.info("ingest: %s: DuckDB read %d of %d records", show(cand.path), got, expected)
        except (
            duckdb.InvalidInputException,
            duckdb.ConversionException,
            duckdb.BinderException,
        ) as exc:
            log.info("ingest: %s is not clean CSV (%s)", show(cand.path), show(str(exc)[:200]))
        except duckdb.OutOfMemoryException:
            # DuckDB's reader needs a few buffers per thread; in fixed-size batches instead
            log.warning(
                "ingest: %s: NIGHTREC_DUCKDB_MEMORY is too small for DuckDB's CSV reader; "
                "reading row by row (slower)",
                show(cand.path),
            )
        con.execute(db.sql("load_landed_reset"))
    # record by record: exact reasons for ragged rows and bad bytes, or why the file is unusable
    rows_in = _csv_python(con, cand, header, cfg)
    return Landed(rows_in, header, positions, unknown=unknown, reader="python")


def _check_header(names: list[str], cfg: IngestConfig) -> list[str]:
    if len(names) > cfg.max_columns:
        raise FileRejected(f"the header has {len(names)} columns; at most {cfg.max_columns}")
    out = []
    for i, name in enumerate(names):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise FileRejected("the header is not UTF-8 text (a binary file?)") from None
        if not name.isprintable():
            raise FileRejected(f"header column {i + 1} has control characters (a binary file?)")
        out.append(name or f"column{i + 1}")
    seen: set[str] = set()
    for name in out:
        if name.casefold() in seen:
            raise FileRejected(f"duplicate column {name!r} in the header")
        seen.add(name.casefold())
    return out


@contextlib.contextmanager
def _csv_reader(path: Path, cfg: IngestConfig) -> Iterator[Any]:
    old = csv.field_size_limit(cfg.max_record_bytes)
    try:
        with open_regular(path) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
            yield csv.reader(text, strict=True)
    finally:
        csv.field_size_limit(old)


def csv_header(path: Path, cfg: IngestConfig) -> list[str]:
    with _csv_reader(path, cfg) as reader:
        try:
            for rec in reader:
                if rec:
                    return list(rec)
        except csv.Error as exc:
            raise FileRejected(f"malformed CSV header: {exc}") from None
    raise FileRejected("no header (the file holds only blank lines)")


def _csv_python(
    con: duckdb.DuckDBPyConnection, cand: Candidate, header: list[str], cfg: IngestConfig
) -> int:
    """Read a CSV record by record; returns the records read (landed + broken)."""
    known = {*KINDS[cand.kind][0], *KINDS[cand.kind][1]}
    ncols = len(header)
    out = Batches(con, header, cfg)
    n = 0
    with _csv_reader(cand.real, cfg) as reader:
        try:
            for rec in reader:  # the header, after any blank lines
                if rec:
                    break
            last_line = reader.line_num
            for rec in reader:
                first_line, last_line = last_line + 1, reader.line_num
                if not rec:
                    continue  # a blank line is not a record
                n += 1
                if len(rec) != ncols:
                    if last_line > first_line:
                        raise FileRejected(
                            f"record {n} (lines {first_line}-{last_line}) has {len(rec)} fields, "
                            f"expected {ncols}: a quote left open joins lines; fix the quoting"
                        )
                    raw = json.dumps([text_of(v) for v in rec], ensure_ascii=False)
                    why = f"expected {ncols} fields, got {len(rec)} (line {first_line})"
                    out.bad(n, None, why, raw)
                    continue
                size = sum(map(len, rec))
                try:
                    "".join(rec).encode("utf-8")
                except UnicodeEncodeError:
                    bad = [c for c, v in zip(header, rec, strict=True) if not_utf8(v)]
                    if any(c in known for c in bad):
                        col = next(c for c in bad if c in known)
                        raw = json.dumps(
                            dict(zip(header, map(text_of, rec), strict=True)), ensure_ascii=False
                        )
                        out.bad(n, col, f"{col} is not valid UTF-8 (line {first_line})", raw)
                        continue
                    rec = [text_of(v) for v in rec]  # bad bytes only in columns ingest ignores
                out.add(n, [v if v != "" else None for v in rec], None, size)
        except csv.Error as exc:
            raise FileRejected(
                f"malformed CSV at line {reader.line_num}: {exc}; the file cannot be split "
                "into rows"
            ) from None
    out.flush()
    return out.count
