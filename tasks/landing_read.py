"""Reading one landing file into DuckDB with nothing lost (the ``landed`` tables).

This module holds what every format shares and the JSON-lines and Parquet readers;
``nightrec.landing_csv`` reads CSV.

Reading puts every record of one file into the temp table ``landed`` (``_rec``: the
record as a struct under the file's own column names) or, when a record cannot even be
split into the file's columns, into ``broken`` (row, field, reason, raw). The file's
columns stay inside ``_rec``: ingest reads the contract's columns out of it by position,
so a file column can never stand in for one of ingest's own. A file that cannot be read
record by record raises ``FileRejected`` and is quarantined whole.

Rows in, per format (the ``rows_in`` every file's books must balance against):

- CSV: non-empty records after the header (RFC 4180: a record ends at ``\\n``,
  ``\\r\\n`` or ``\\r`` outside quotes; blank lines are not records). Clean files are
  read by DuckDB under its memory cap and cross-checked against an independent count of
  the raw bytes; any disagreement, and any malformed file, is re-read record by record in
  Python. Malformed quoting (a quote left open at the end, text after a closing quote, a
  record joined over lines with the wrong number of fields) rejects the file whole.
- JSON lines: non-blank lines (split at ``\\n``, ``\\r\\n`` or ``\\r``, which JSON
  text cannot hold unescaped).
- Parquet: the row count in the file's footer, checked against the rows read.

Row numbers (``_row``) count those records from 1, so JSON lines, CSV and Parquet copies of
one file number their rows alike. Memory is bounded by configuration: DuckDB's cap, and at
most ``chunk_rows`` / ``chunk_bytes`` rows in Python at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa

from nightrec import db, errors
from nightrec.config import IngestConfig
from nightrec.landing import KINDS, Candidate, FileRejected, open_regular

log = logging.getLogger(__name__)

# what a file named .csv / .jsonl must not start with: compressed or binary containers
_MAGIC = {
    b"\x1f\x8b": "gzip-compressed data",
    b"PK\x03\x04": "a zip archive",
    b"PAR1": "Parquet data",
    b"\x28\xb5\x2f\xfd": "zstd-compressed data",
    b"\xff\xfe": "UTF-16 text",
    b"\xfe\xff": "UTF-16 text",
}
_SCALAR_TYPES = re.compile(
    r"(VARCHAR|BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER"
    r"|UBIGINT|UHUGEINT|FLOAT|DOUBLE|DECIMAL\(\d+,\d+\)|DATE|TIMESTAMP.*|UUID)"
)
_NEWLINE = re.compile(rb"\r\n|\r|\n")
_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass
class Landed:
    """What ``read_file`` put into ``landed`` and ``broken``."""

    rows_in: int  # records in the file (see the module docstring)
    columns: list[str]  # the file's column names
    positions: dict[str, int]  # contract column -> 1-based position in ``_rec``
    row_expr: str = "_row"  # how ``landed`` numbers its rows
    raw_expr: str = "to_json(_rec)"  # the raw row of a rejected record
    problem: tuple[str, str] | None = None  # (field, reason) that rejects every row
    unknown: list[str] = field(default_factory=list)  # columns ingest ignores
    reader: str = "duckdb"

    def staging_sql(self, kind: str) -> str:
        """``staging``: the contract's columns as text, read out of ``_rec`` by position.

        Identifiers come from ``KINDS`` and positions are integers: no file text is in it.
        """
        required, optional = KINDS[kind]
        cols = [
            f"struct_extract_at(_rec, {self.positions[c]})::varchar as {c}"
            if c in self.positions
            else f"null::varchar as {c}"
            for c in (*required, *optional)
        ]
        return (
            f"create or replace temp view staging as select {self.row_expr} as _row, "
            f"{self.raw_expr} as _raw, {', '.join(cols)} from landed"
        )


def check_start(con: duckdb.DuckDBPyConnection, cand: Candidate) -> None:
    """Start a file afresh (empty ``broken``); refuse empty files and binary containers."""
    con.execute(db.sql("load_landed_reset"))
    with open_regular(cand.real) as fh:
        head = fh.read(8)
    if not head:
        raise FileRejected("empty file (0 bytes)")
    for magic, what in _MAGIC.items():
        if cand.fmt != "parquet" and head.startswith(magic):
            raise FileRejected(f"{what}, not {cand.fmt.upper()} text")


@contextlib.contextmanager
def file_order(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Keep file order while a whole file is read, so that rowid + 1 is the row number.

    Ingest turns insertion order off otherwise (every later step orders by ``_row``
    explicitly), which lets DuckDB spill and parallelise more freely.
    """
    before = scalar(con, "select current_setting('preserve_insertion_order')")
    con.execute("set preserve_insertion_order = true")
    try:
        yield
    finally:
        con.execute("set preserve_insertion_order = $v", {"v": before})


def scalar(con: duckdb.DuckDBPyConnection, query: str, params: dict | None = None) -> Any:
    """The one value a query returns, fetched to the end (a half-read result blocks
    ``register`` on the connection)."""
    return con.execute(query, params or {}).fetchall()[0][0]


def load_sql(name: str, columns: list[str]) -> str:
    """``sql/<name>.sql`` (a ``load_landed_*`` file) with ``{row}``, the alias that names
    the file's whole row, set to one that no column of the file is called (case does not
    count): where a column has the alias's name, DuckDB reads that column in its place."""
    taken = {c.casefold() for c in columns}
    alias, n = "t", 0
    while alias in taken:
        n += 1
        alias = f"t{n}"
    return db.sql(name).format(row=alias)


def known_columns(kind: str, columns: list[str]) -> tuple[dict[str, int], list[str]]:
    required, optional = KINDS[kind]
    known = {*required, *optional}
    positions = {c: i + 1 for i, c in enumerate(columns) if c in known}
    return positions, [c for c in columns if c not in known]


def text_of(value: str) -> str:
    """Text with bytes that were not UTF-8 written as ``\\xNN``, so the raw row keeps them."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def not_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Batches:
    """Collects landed rows and broken records, flushing fixed-size batches into DuckDB."""

    def __init__(self, con: duckdb.DuckDBPyConnection, names: list[str], cfg: IngestConfig):
        self.con, self.names, self.cfg = con, names, cfg
        self.rows: list[tuple[int, str | None, list[str | None]]] = []
        self.broken: list[tuple[int, str | None, str, str]] = []
        self.size = 0
        self.count = 0  # every record seen: landed + broken
        self._flush_rows(create=True)

    def add(self, row: int, values: list[str | None], raw: str | None, size: int) -> None:
        self.rows.append((row, raw, values))
        self._grow(size)

    def bad(self, row: int, col: str | None, reason: str, raw: str) -> None:
        self.broken.append((row, col, reason, raw[: self.cfg.max_record_bytes]))
        self._grow(len(raw))

    def _grow(self, size: int) -> None:
        self.count += 1
        self.size += size
        if len(self.rows) + len(self.broken) >= self.cfg.chunk_rows or (
            self.size >= self.cfg.chunk_bytes
        ):
            self.flush()

    def flush(self) -> None:
        self._flush_rows()
        if self.broken:
            row, col, reason, raw = zip(*self.broken, strict=True)
            self._insert(
                "insert into broken select * from landing_batch",
                pa.table(
                    {
                        "_row": pa.array(row, pa.int64()),
                        "field": pa.array(col, pa.string()),
                        "reason": pa.array(reason, pa.string()),
                        "raw": pa.array(raw, pa.string()),
                    }
                ),
            )
        self.broken, self.size = [], 0

    def _insert(self, statement: str, batch: pa.Table) -> None:
        self.con.register("landing_batch", batch)
        try:
            self.con.execute(statement)
        finally:
            self.con.unregister("landing_batch")

    def _flush_rows(self, create: bool = False) -> None:
        cols: list[tuple[str | None, ...]] = list(zip(*[r[2] for r in self.rows], strict=True))
        cols = cols or [()] * len(self.names)  # no rows yet: empty columns, the schema only
        rec = pa.StructArray.from_arrays(
            [pa.array(c, pa.string()) for c in cols],
            fields=[pa.field(n, pa.string()) for n in self.names],
        )
        batch = pa.table(
            {
                "_row": pa.array([r[0] for r in self.rows], pa.int64()),
                "_raw": pa.array([r[1] for r in self.rows], pa.string()),
                "_rec": rec,
            }
        )
        if create:
            self._insert("create temp table landed as select * from landing_batch", batch)
        elif self.rows:
            self._insert("insert into landed select * from landing_batch", batch)
        self.rows = []


def lines(
    fh: BinaryIO, limit: int, block_size: int = 1 << 20
) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of every line, split at LF, CRLF or CR; None for an over-long one.

    Holds at most ``limit`` bytes of a line plus one block: a longer line is dropped as it
    streams by and reported as None.
    """
    line, carry, too_long, after_cr = 0, b"", False, False
    while block := fh.read(block_size):
        if after_cr and block[:1] == b"\n":
            block = block[1:]  # the LF of a CRLF split between two blocks
        after_cr = block[-1:] == b"\r"
        *ended, tail = _NEWLINE.split(block)
        for i, part in enumerate(ended):
            whole = carry + part if i == 0 else part
            line += 1
            yield line, None if too_long or len(whole) > limit else whole
            too_long = False
        if ended:
            carry = b""
        carry += tail
        if len(carry) > limit:
            too_long, carry = True, b""
    if carry or too_long:
        yield line + 1, None if too_long else carry


def read_jsonl(con: duckdb.DuckDBPyConnection, cand: Candidate, cfg: IngestConfig) -> Landed:
    required, optional = KINDS[cand.kind]
    names = [*required, *optional]
    out = Batches(con, names, cfg)
    unknown: dict[str, None] = {}
    n = 0
    with open_regular(cand.real) as fh:
        for line_no, data in lines(fh, cfg.max_record_bytes):
            if data is not None and not data.strip():
                continue  # a blank line is not a row
            n += 1
            if data is None:
                out.bad(n, None, f"line {line_no} is longer than {cfg.max_record_bytes} bytes", "")
                continue
            if line_no == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a byte-order mark
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raw = data.decode("utf-8", "backslashreplace")
                out.bad(n, None, f"line {line_no} is not valid UTF-8", raw)
                continue
            try:
                obj = json.loads(text, object_pairs_hook=_unique_keys)
            except (ValueError, RecursionError) as exc:
                out.bad(n, None, f"line {line_no} is not JSON: {str(exc)[:200]}", text)
                continue
            if not isinstance(obj, dict):
                what = _JSON_KINDS.get(type(obj), "a value")
                out.bad(n, None, f"line {line_no} is JSON {what}, not an object", text)
                continue
            values, bad = [], None
            for col in names:
                v = obj.get(col)
                if bad is None and isinstance(v, dict | list):
                    bad = (col, f"{col} is {_JSON_KINDS.get(type(v), 'an object')}, not one value")
                elif bad is None and isinstance(v, str) and not_utf8(v):
                    bad = (col, f"{col} holds a lone surrogate escape, not Unicode text")
                values.append(v if v is None or isinstance(v, str) else json.dumps(v))
            if bad:
                out.bad(n, bad[0], bad[1], text)
                continue
            if len(unknown) < 50:
                unknown.update((k, None) for k in obj if k not in names)
            out.add(n, values, text, len(data))
    out.flush()
    if out.count != n:  # every non-blank line is landed or broken
        raise FileRejected(f"read {n} lines but recorded {out.count}")
    positions = {c: i + 1 for i, c in enumerate(names)}
    return Landed(n, names, positions, raw_expr="_raw", unknown=list(unknown), reader="python")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def read_parquet(con: duckdb.DuckDBPyConnection, cand: Candidate, cfg: IngestConfig) -> Landed:
    params = {"path": str(cand.real)}
    try:
        result = con.execute("select * from read_parquet($path) limit 0", params)
        described = result.description
        result.fetchall()
        rows_in = int(scalar(con, db.sql("load_landed_parquet_rows"), params))
        with file_order(con):
            con.execute(load_sql("load_landed_parquet", [str(d[0]) for d in described]), params)
    except duckdb.Error as exc:
        # the file's fault: bad input, a bad read, bad values; DuckDB 2.0.1 raises some
        # Parquet errors (a footer length error) as plain duckdb.Error
        bad = (duckdb.InvalidInputException, duckdb.IOException, duckdb.ConversionException)
        if not (isinstance(exc, bad) or type(exc) is duckdb.Error):
            raise
        if errors.classify(exc) is not None:
            raise  # a full disk or the like while reading: not the file's fault
        raise FileRejected(f"not a readable Parquet file: {str(exc).splitlines()[0]}") from None
    columns = [str(d[0]) for d in described]
    if len(columns) > cfg.max_columns:
        raise FileRejected(f"the file has {len(columns)} columns; at most {cfg.max_columns}")
    types = {str(d[0]): str(d[1]) for d in described}
    if len({c.casefold() for c in columns}) != len(columns):
        raise FileRejected("duplicate column names (they differ only in case)")
    positions, unknown = known_columns(cand.kind, columns)
    got = scalar(con, "select count(*) from landed")
    if got != rows_in:
        raise FileRejected(f"the footer says {rows_in} rows, {got} were read")
    problem = None
    for col in positions:
        if not _SCALAR_TYPES.fullmatch(types[col]):
            problem = (col, f"column {col!r} has type {types[col]}, not a single value")
            break
    return Landed(rows_in, columns, positions, "rowid + 1", problem=problem, unknown=unknown)
