"""A generated corpus of hostile landing files, each with what ingest must make of it.

``build(root)`` lists the cases (cheap: nothing is written, so tests can be parametrized
by them); ``write(root, cases)`` writes every case under ``root/landing/<kind>/``, a good
file sorting right after each, and the link targets under ``root/outside/``. Each case
names one file and its expected outcome:

- ``ingested``: loaded with ``rows`` rows in, ``loaded`` of them loaded, and (when given)
  exactly the rejected ``(row, field)`` pairs of ``rejected``;
- ``quarantined``: nothing of it loaded, recorded in ``quarantined_files`` (not retried);
- ``refused``: never read (a link out of landing, a FIFO, ...), logged as refused;
- ``skipped``: hidden or still being written, never read, not refused either;
- ``either``: ingested or quarantined (random bytes); only the invariants are checked.

Files whose content must never reach the warehouse carry ``SECRET`` (outside files).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import socket
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SECRET = "SECRET-7f3a9c-do-not-ingest"
EVENTS = ["user_id", "item_id", "event_type", "ts", "value"]
TS = "2026-10-01T10:00:00Z"
# the ingest's own working names and other names a file must not be able to hijack
INTERNAL = [
    "_row", "bad_field", "reason", "p_ts", "p_value", "p_active", "p_user_id", "p_item_id",
    "p_event_type", "p_event_id", "p_key", "p_line_break", "value_text", "problem", "_raw",
    "_rec", "rowid", "file_row_number", "filename", "source_file", "checked", "staging",
    "landed", "broken", "bad_text", "p_updated_at", "p_created_at",
]  # fmt: skip


@dataclass
class Case:
    name: str
    kind: str
    file: str  # name inside landing/<kind>/
    outcome: str  # ingested | quarantined | refused | skipped | either
    rows: int | None = None
    loaded: int | None = None
    rejected: dict[int, str | None] | None = None  # row -> field of every rejected row
    write: Callable[[Path], None] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.name


def csv_bytes(header: list[str], rows: list[list[str]], eol: str = "\n") -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=eol)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def ev(tag: str, k: int, **over: str) -> list[str]:
    """A good event row, unique per (tag, k); keyword arguments replace fields."""
    row = {"user_id": f"u-{tag}-{k}", "item_id": f"i{k}", "event_type": "view", "ts": TS}
    row["value"] = ""
    row.update(over)
    return [row[c] for c in EVENTS]


def good_events(tag: str, n: int) -> list[list[str]]:
    return [ev(tag, k) for k in range(n)]


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _events_table(tag: str, n: int, **cols: pa.Array) -> pa.Table:
    data = {
        "user_id": pa.array([f"u-{tag}-{k}" for k in range(n)]),
        "item_id": pa.array([f"i{k}" for k in range(n)]),
        "event_type": pa.array(["view"] * n),
        "ts": pa.array([1790000000_000000 + k for k in range(n)], pa.timestamp("us", tz="UTC")),
        "value": pa.array([1.5] * n),
    }
    data.update(cols)
    return pa.table(data)


def _jsonl(objs: list[object], eol: str = "\n") -> bytes:
    return "".join(json.dumps(o) + eol for o in objs).encode()


def _ev_obj(tag: str, k: int, **over: object) -> dict[str, object]:
    obj: dict[str, object] = dict(zip(EVENTS[:4], ev(tag, k)[:4], strict=True))
    obj.update(over)
    return obj


def build(root: Path) -> list[Case]:  # noqa: C901 - one long list of cases, read top to bottom
    landing, outside = root / "landing", root / "outside"
    secret, store = outside / "secret.csv", landing / ".store"
    cases: list[Case] = []

    def add(
        name: str,
        data: bytes | None,
        outcome: str,
        rows: int | None = None,
        loaded: int | None = None,
        rejected: dict[int, str | None] | None = None,
        kind: str = "events",
        ext: str = ".csv",
        write: Callable[[Path], None] | None = None,
        file: str | None = None,
    ) -> None:
        fname = file or f"{len(cases):03d}-{name}{ext}"
        if data is not None:

            def write(p: Path, data: bytes = data) -> None:
                p.write_bytes(data)

        if outcome == "ingested" and rejected is None and rows is not None and loaded == rows:
            rejected = {}
        cases.append(Case(name, kind, fname, outcome, rows, loaded, rejected, write))

    # ---- 1. columns named like ingest's own: never read, never override
    for col in INTERNAL:
        nasty = {"_row": "1", "bad_field": "", "reason": "x", "p_key": "same"}.get(col, "x")
        rows = [[*ev(col, 0), nasty], [*ev(col, 1), nasty], [*ev(col, 2, user_id=""), "u-fake"]]
        add(f"col-{col}", csv_bytes([*EVENTS, col], rows), "ingested", 3, 2, {3: "user_id"})
    # p_key the same on two different events: both load
    rows = [[*ev("pkey2", k), "same-key"] for k in range(2)]
    add("col-p_key-merge", csv_bytes([*EVENTS, "p_key"], rows), "ingested", 2, 2)
    # p_user_id must not stand in for an empty user_id; p_ts not for a bad ts
    rows = [[*ev("puid", 0, user_id=" "), "u-x", TS], [*ev("puid", 1, ts="garbage"), "u-y", TS]]
    add(
        "col-p_user_id-p_ts",
        csv_bytes([*EVENTS, "p_user_id", "p_ts"], rows),
        "ingested",
        2,
        0,
        {1: "user_id", 2: "ts"},
    )
    for i, weird in enumerate(['a"b', "'; drop table events; --", "x" * 300, "ユーザー", " "]):
        rows = [[*ev(f"weird{i}", k), "v"] for k in range(2)]
        add(f"col-weird-{i}", csv_bytes([*EVENTS, weird], rows), "ingested", 2, 2)
    add("col-empty-name", csv_bytes([*EVENTS, ""], [[*ev("emptyname", 0), "v"]]), "ingested", 1, 1)
    add("col-case-dup", csv_bytes([*EVENTS, "USER_ID"], [[*ev("casedup", 0), "x"]]), "quarantined")
    add("col-dup-known", csv_bytes([*EVENTS, "user_id"], [[*ev("dupk", 0), "x"]]), "quarantined")
    add(
        "col-dup-unknown",
        csv_bytes([*EVENTS, "x", "x"], [[*ev("dupu", 0), "1", "2"]]),
        "quarantined",
    )
    objs = [
        _ev_obj("jcol", 0, _row=7, p_key="same", bad_field="user_id"),
        _ev_obj("jcol", 1, _row=7, p_key="same", reason="x", p_ts="garbage"),
        _ev_obj("jcol", 2, user_id="", p_user_id="u-fake"),
    ]
    add("jsonl-internal-keys", _jsonl(objs), "ingested", 3, 2, {3: "user_id"}, ext=".jsonl")
    extra = {c: pa.array(["same", "same", "x"]) for c in ("_row", "p_key", "bad_field", "rowid")}
    table = _events_table("pcol", 3, **extra).append_column("file_row_number", pa.array([9, 9, 9]))
    table = table.set_column(0, "user_id", pa.array(["u-pcol-0", "u-pcol-1", None]))
    add("parquet-internal-cols", _parquet(table), "ingested", 3, 2, {3: "user_id"}, ext=".parquet")
    items = csv_bytes(
        ["item_id", "title", "active", "p_active", "p_key"],
        [["it-pa-1", "T", "maybe", "true", "k"], ["it-pa-2", "T", "true", "false", "k"]],
    )
    add("items-p_active", items, "ingested", 2, 1, {1: "active"}, kind="items")
    users = csv_bytes(["user_id", "p_user_id", "created_at"], [["", "u-x", TS], ["us-pu", "", TS]])
    add("users-p_user_id", users, "ingested", 2, 1, {1: "user_id"}, kind="users")

    # ---- 2. line structure: every record is counted, or the file is quarantined whole
    three = good_events("eol", 3)
    for eol_name, eol in (("lf", "\n"), ("crlf", "\r\n"), ("cr-only", "\r")):
        rows = [[*r[:1], f"{r[1]}-{eol_name}", *r[2:]] for r in three]
        add(f"eol-{eol_name}", csv_bytes(EVENTS, rows, eol), "ingested", 3, 3)
        add(
            f"bom-{eol_name}",
            b"\xef\xbb\xbf" + csv_bytes(EVENTS, good_events(f"bom{eol_name}", 3), eol),
            "ingested",
            3,
            3,
        )
    lines = [",".join(EVENTS), *(",".join(r) for r in good_events("mixed", 4))]
    add(
        "eol-mixed",
        (
            lines[0] + "\n" + lines[1] + "\r\n" + lines[2] + "\r" + lines[3] + "\n" + lines[4]
        ).encode(),
        "ingested",
        4,
        4,
    )
    add(
        "no-final-eol", csv_bytes(EVENTS, good_events("nofinal", 2)).rstrip(b"\n"), "ingested", 2, 2
    )
    body = csv_bytes(EVENTS, good_events("blank", 3)).replace(b"\n", b"\n\n\r\n", 2)
    add("blank-lines-between", body, "ingested", 3, 3)
    add(
        "leading-blank-lines", b"\n\n" + csv_bytes(EVENTS, good_events("lead", 2)), "ingested", 2, 2
    )
    rows = [",".join(r) for r in good_events("unclosed", 4)]
    rows[1] = rows[1].replace("i1", '"i1')
    add(
        "unclosed-quote-eof",
        (",".join(EVENTS) + "\n" + "\n".join(rows) + "\n").encode(),
        "quarantined",
    )
    rows = [",".join(r) for r in good_events("rejoin", 5)]
    rows[1], rows[3] = rows[1].replace("i1", '"i1'), rows[3].replace("i3", 'i3"')
    add(
        "unclosed-quote-rejoined",
        (",".join(EVENTS) + "\n" + "\n".join(rows) + "\n").encode(),
        "quarantined",
    )
    add(
        "newline-in-id",
        csv_bytes(EVENTS, [ev("nlid", 0, user_id="u\n1"), ev("nlid", 1)]),
        "quarantined",
    )
    items = csv_bytes(
        ["item_id", "title", "description"],
        [["it-nl-1", "Two\nlines", "a\r\nb"], ["it-nl-2", "One", 'with "quotes"']],
        "\r\n",
    )
    add("items-embedded-newlines", items, "ingested", 2, 2, kind="items")
    add("header-only", (",".join(EVENTS) + ",hdronly\n").encode(), "ingested", 0, 0)
    add("empty-file", b"", "quarantined")
    add("blank-lines-only", b"\n\r\n\n", "quarantined")
    rows = [ev("ragged", 0), ev("ragged", 1)[:3], [*ev("ragged", 2), "x", "y"], ev("ragged", 3)]
    add("ragged", csv_bytes(EVENTS, rows), "ingested", 4, 2, {2: None, 3: None})
    rows = [[*r, ""] for r in good_events("trail", 2)]
    add("trailing-comma", csv_bytes([*EVENTS, ""], rows), "ingested", 2, 2)
    body = csv_bytes(EVENTS, good_events("latin", 3)).replace(b"i1,", b"caf\xe9,")
    add("latin1-in-item_id", body, "ingested", 3, 2, {2: "item_id"})
    body = csv_bytes([*EVENTS, "note"], [[*r, "NOTE"] for r in good_events("latin2", 2)])
    add("latin1-in-ignored-column", body.replace(b"NOTE", b"caf\xe9"), "ingested", 2, 2)
    add(
        "utf16", csv_bytes(EVENTS, good_events("utf16", 2)).decode().encode("utf-16"), "quarantined"
    )
    add("gzip-named-csv", gzip.compress(csv_bytes(EVENTS, good_events("gz", 2))), "quarantined")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.csv", csv_bytes(EVENTS, good_events("zip", 2)))
    add("zip-named-csv", buf.getvalue(), "quarantined")
    add("parquet-named-csv", _parquet(_events_table("pqcsv", 2)), "quarantined")
    junk = bytes(random.Random(7).randrange(256) for _ in range(4096))
    add("binary-junk", b"\x00\x01\x02\x03" + junk, "quarantined")
    add("random-bytes-after-header", (",".join(EVENTS) + "\n").encode() + junk, "either")
    rows = [ev("nul", 0), ev("nul", 1, user_id="u\x00nul"), ev("nul", 2, item_id="i\x01")]
    add("nul-in-ids", csv_bytes(EVENTS, rows), "ingested", 3, 1, {2: "user_id", 3: "item_id"})
    lines = [",".join(r) for r in good_events("ws", 2)]
    add(
        "whitespace-line",
        (",".join(EVENTS) + "\n" + lines[0] + "\n   \n" + lines[1] + "\n").encode(),
        "ingested",
        3,
        2,
        {2: None},
    )
    add(
        "field-too-long",
        csv_bytes([*EVENTS, "big"], [[*ev("long", 0), "x" * ((1 << 20) + 10)]]),
        "quarantined",
    )
    add(
        "too-many-columns", csv_bytes([f"c{k}" for k in range(1001)], [["1"] * 1001]), "quarantined"
    )
    lines = [",".join(r) for r in good_events("spq", 2)]
    add(
        "space-after-quote",
        (",".join(EVENTS) + '\n"u-spq" ,i1,view,' + TS + ",\n" + lines[0] + "\n").encode(),
        "ingested",
        2,
        2,
    )  # DuckDB reads it: unambiguous
    body = csv_bytes([*EVENTS, "note"], [[*r, "NOTE"] for r in good_events("stray", 2)])
    add("stray-quote-in-field", body.replace(b"NOTE", b'ab"c', 1), "ingested", 2, 2)
    add(
        "excel-sep-line",
        b"sep=,\n" + csv_bytes(EVENTS, good_events("sep", 2)),
        "ingested",
        3,
        0,
        {1: None, 2: None, 3: None},
    )
    body = csv_bytes(EVENTS, good_events("semi", 2)).replace(b",", b";")
    add("semicolon-delimited", body, "ingested", 2, 0, {1: "user_id", 2: "user_id"})
    lines = [",".join(r) for r in good_events("cr", 3)]
    lines[1] = lines[1].replace("i1,", "i1\r,")
    add(
        "cr-inside-row",
        (",".join(EVENTS) + "\n" + "\n".join(lines) + "\n").encode(),
        "ingested",
        4,
        2,
        {2: None, 3: None},
    )
    quoted = b'"user_id","item_id","event_type","ts","value"\n"u-qh","i1","view","' + TS.encode()
    add("quoted-everything", quoted + b'",""\n', "ingested", 1, 1)

    # ---- JSON lines
    objs = [_ev_obj("jeol", k) for k in range(3)]
    add("jsonl-cr-only", _jsonl(objs, "\r"), "ingested", 3, 3, ext=".jsonl")
    add(
        "jsonl-crlf-bom",
        b"\xef\xbb\xbf" + _jsonl([_ev_obj("jcrlf", k) for k in range(3)], "\r\n"),
        "ingested",
        3,
        3,
        ext=".jsonl",
    )
    objs = [_ev_obj("jno", 0), [1, 2], "str", 42, None, True, _ev_obj("jno", 1)]
    add(
        "jsonl-non-objects",
        _jsonl(objs),
        "ingested",
        7,
        2,
        dict.fromkeys(range(2, 7)),
        ext=".jsonl",
    )
    objs = [
        _ev_obj("jnest", 0, user_id={"a": 1}),
        _ev_obj("jnest", 1, item_id=[1]),
        _ev_obj("jnest", 2, ts={"t": 1}),
        _ev_obj("jnest", 3),
    ]
    add(
        "jsonl-nested-known",
        _jsonl(objs),
        "ingested",
        4,
        1,
        {1: "user_id", 2: "item_id", 3: "ts"},
        ext=".jsonl",
    )
    objs = [_ev_obj("jnu", k, meta={"a": [1, {"b": None}]}, tags=[1, 2]) for k in range(2)]
    add("jsonl-nested-ignored", _jsonl(objs), "ingested", 2, 2, ext=".jsonl")
    body = _jsonl([_ev_obj("jbad", 0)]) + b'{"user_id": "u1",\n' + _jsonl([_ev_obj("jbad", 1)])
    add("jsonl-malformed", body, "ingested", 3, 2, {2: None}, ext=".jsonl")
    body = b'{"user_id": "a", "user_id": "b", "item_id": "i", "event_type": "view", "ts": "' + (
        TS.encode() + b'"}\n'
    )
    add(
        "jsonl-duplicate-keys",
        body + _jsonl([_ev_obj("jdup", 0)]),
        "ingested",
        2,
        1,
        {1: None},
        ext=".jsonl",
    )
    pretty = json.dumps([_ev_obj("jarr", 0), _ev_obj("jarr", 1)], indent=1).encode() + b"\n"
    n = sum(1 for line in pretty.splitlines() if line.strip())
    add(
        "jsonl-pretty-array", pretty, "ingested", n, 0, dict.fromkeys(range(1, n + 1)), ext=".jsonl"
    )
    body = _jsonl([_ev_obj("jutf", 0)]) + b'{"user_id": "caf\xe9"}\n'
    add("jsonl-not-utf8", body, "ingested", 2, 1, {2: None}, ext=".jsonl")
    nan_lines = [
        f'{{"user_id": "u-jnan-{k}", "item_id": "i", "event_type": "rating", "ts": "{TS}", '
        f'"value": {v}}}'
        for k, v in enumerate(["NaN", "Infinity", "-Infinity", "1e400", "1e10"])
    ]
    add(
        "jsonl-nan-inf",
        ("\n".join(nan_lines) + "\n").encode() + _jsonl([_ev_obj("jnan", 9)]),
        "ingested",
        6,
        1,
        dict.fromkeys(range(1, 6), "value"),
        ext=".jsonl",
    )
    deep = b'{"user_id": "u-deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    add(
        "jsonl-deep-nesting",
        deep + _jsonl([_ev_obj("jdeep", 0)]),
        "ingested",
        2,
        1,
        {1: None},
        ext=".jsonl",
    )
    long_line = json.dumps(_ev_obj("jlong", 0, pad="x" * (1 << 20))).encode() + b"\n"
    add(
        "jsonl-line-too-long",
        long_line + _jsonl([_ev_obj("jlong", 1)]),
        "ingested",
        2,
        1,
        {1: None},
        ext=".jsonl",
    )
    add(
        "jsonl-empty-object",
        b"{}\n" + _jsonl([_ev_obj("jempty", 0)]),
        "ingested",
        2,
        1,
        {1: "user_id"},
        ext=".jsonl",
    )
    add("jsonl-blank-only", b"\n  \n\r\n", "ingested", 0, 0, ext=".jsonl")
    body = b'{"user_id": "u\\ud800", "item_id": "i", "event_type": "view", "ts": "' + TS.encode()
    body += b'", "note": "\\udfff"}\n' + _jsonl([_ev_obj("jsur", 0, note="\udfff")])
    add("jsonl-lone-surrogate", body, "ingested", 2, 1, {1: "user_id"}, ext=".jsonl")
    add("jsonl-gzip", gzip.compress(_jsonl([_ev_obj("jgz", 0)])), "quarantined", ext=".jsonl")
    add(
        "jsonl-nul-in-id",
        _jsonl([_ev_obj("jnul", 0, user_id="u\x00"), _ev_obj("jnul", 1)]),
        "ingested",
        2,
        1,
        {1: "user_id"},
        ext=".jsonl",
    )

    # ---- Parquet
    good_pq = _parquet(_events_table("pqbad", 3))
    add(
        "parquet-corrupt-footer",
        good_pq[:-12] + b"\x00" * 8 + b"PAR1",
        "quarantined",
        ext=".parquet",
    )
    add("parquet-truncated", good_pq[: len(good_pq) // 2], "quarantined", ext=".parquet")
    add(
        "parquet-is-text", csv_bytes(EVENTS, good_events("pqtxt", 2)), "quarantined", ext=".parquet"
    )
    add("parquet-empty-file", b"", "quarantined", kind="users", ext=".parquet")
    table = _events_table(
        "pqtypes",
        4,
        user_id=pa.array([1, 2, 3, 4]),
        ts=pa.array(["2026-10-01T10:00:00Z", "garbage", "2026-10-01T10:00:01Z", TS]),
        value=pa.array(["1.5", "2", "abc", None]),
    )
    add(
        "parquet-wrong-types",
        _parquet(table),
        "ingested",
        4,
        2,
        {2: "ts", 3: "value"},
        ext=".parquet",
    )
    table = _events_table("pqnest", 2, user_id=pa.array([[1], [2]]))
    add(
        "parquet-nested-user_id",
        _parquet(table),
        "ingested",
        2,
        0,
        {1: "user_id", 2: "user_id"},
        ext=".parquet",
    )
    table = _events_table("pqblob", 2, user_id=pa.array([b"\x00a", b"b"]))
    add(
        "parquet-binary-user_id",
        _parquet(table),
        "ingested",
        2,
        0,
        {1: "user_id", 2: "user_id"},
        ext=".parquet",
    )
    table = _events_table("pqepoch", 2, ts=pa.array([1790000000, 9999999999]))
    add("parquet-epoch-int-ts", _parquet(table), "ingested", 2, 1, {2: "ts"}, ext=".parquet")
    ts = pa.array(
        [-62135596800_000000, 9_990_000_000_000000, 1790000000_000000], pa.timestamp("us", tz="UTC")
    )
    add(
        "parquet-ts-year-1-and-2286",
        _parquet(_events_table("pqyr", 3, ts=ts)),
        "ingested",
        3,
        1,
        {1: "ts", 2: "ts"},
        ext=".parquet",
    )
    table = _events_table("pqnan", 4, value=pa.array([float("nan"), float("inf"), -1e300, 2.0]))
    add(
        "parquet-nan-inf",
        _parquet(table),
        "ingested",
        4,
        1,
        dict.fromkeys((1, 2, 3), "value"),
        ext=".parquet",
    )
    table = _events_table("pqmiss", 2).drop_columns(["event_type"])
    add(
        "parquet-missing-column",
        _parquet(table),
        "ingested",
        2,
        0,
        {1: "event_type", 2: "event_type"},
        ext=".parquet",
    )
    add("parquet-zero-rows", _parquet(_events_table("pqzero", 0)), "ingested", 0, 0, ext=".parquet")
    table = _events_table("pqnul", 2, user_id=pa.array(["u\x00", "u-pqnul-ok"]))
    add("parquet-nul-in-id", _parquet(table), "ingested", 2, 1, {1: "user_id"}, ext=".parquet")

    # ---- 3. values outside the valid range
    specials = [
        "infinity",
        "-infinity",
        "epoch",
        "0001-01-01",
        "2286-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "9999999999",
        "0",
        "now",
        "1e10",
        "2026-02-30",
        "1900-01-01",
        "2999-01-01",
    ]
    rows = [ev("tsx", k, ts=t) for k, t in enumerate(specials)] + [ev("tsx", 99)]
    add(
        "ts-specials",
        csv_bytes(EVENTS, rows),
        "ingested",
        len(rows),
        1,
        dict.fromkeys(range(1, len(specials) + 1), "ts"),
    )
    values = ["NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "1e10", "0x10", "4,5"]
    rows = [ev("valx", k, event_type="rating", value=v) for k, v in enumerate(values)]
    rows.append(ev("valx", 99, event_type="rating", value="4.5"))
    add(
        "value-specials",
        csv_bytes(EVENTS, rows),
        "ingested",
        len(rows),
        1,
        dict.fromkeys(range(1, len(values) + 1), "value"),
    )
    bad_ids = ["u\x00", "u\x01", "u\x1b[31m", "u\x7f", "u\u0085", "u\u2028", "u\tx", "u" * 257]
    rows = [ev("idx", k, user_id=u) for k, u in enumerate(bad_ids)]
    rows += [ev("idx", 50, item_id="i\x00"), ev("idx", 51, item_id="i" * 300), ev("idx", 99)]
    fields = {**dict.fromkeys(range(1, 9), "user_id"), 9: "item_id", 10: "item_id"}
    add("id-controls-and-length", csv_bytes(EVENTS, rows), "ingested", 11, 1, fields)
    header = ["event_id", *EVENTS]
    rows = [["e\x00", *ev("eid", 0)], ["e" * 300, *ev("eid", 1)], ["e-ok", *ev("eid", 2)]]
    add("event_id-bad", csv_bytes(header, rows), "ingested", 3, 1, {1: "event_id", 2: "event_id"})
    header = ["item_id", "title", "description", "active", "updated_at"]
    rows = [
        ["it-v-1", "Ti\x00tle", "", "true", ""],
        ["it-v-2", "T", "", "true", "infinity"],
        ["it-v-3", "T", "", "true", "0001-01-01"],
        ["it-v-4", "T", "", "maybe", ""],
        ["it-v\x01", "T", "", "true", ""],
        ["it-v-6", "T", "d" * 70_000, "true", ""],
        ["it-v-7", "T", "", "true", "2286-01-01"],
        ["it-v-ok", "Good", "Fine", "true", TS],
    ]
    fields = {
        1: "title",
        2: "updated_at",
        3: "updated_at",
        4: "active",
        5: "item_id",
        6: "description",
        7: "updated_at",
    }
    add("items-bad-values", csv_bytes(header, rows), "ingested", 8, 1, fields, kind="items")
    rows = [["us-v-1", "epoch"], ["us-v-2", "2286-01-01"], ["u\x00", TS], ["us-v-ok", TS]]
    add(
        "users-bad-values",
        csv_bytes(["user_id", "created_at"], rows),
        "ingested",
        4,
        1,
        {1: "created_at", 2: "created_at", 3: "user_id"},
        kind="users",
    )

    # ---- 4. links, special files, hidden and odd names
    def link(target: str | Path) -> Callable[[Path], None]:
        return lambda p: p.symlink_to(target)

    add("link-etc-passwd", None, "refused", write=link("/etc/passwd"))
    add("link-outside-absolute", None, "refused", write=link(secret))
    add("link-outside-relative", None, "refused", write=link(Path("../../outside/secret.csv")))
    add("link-outside-dir", None, "refused", write=link(outside / "dir.csv"))
    add("link-dev-zero", None, "refused", write=link("/dev/zero"))
    add("link-broken", None, "refused", write=link(outside / "missing.csv"))
    add("link-chain-out", None, "refused", write=link(store / "hop.csv"))
    add("link-inside-landing", None, "ingested", 2, 2, write=link(store / "inside.csv"))
    add("fifo", None, "refused", write=lambda p: os.mkfifo(p))
    add("dir-named-csv", None, "refused", write=lambda p: p.mkdir())

    def make_socket(p: Path) -> None:
        cwd = os.getcwd()
        os.chdir(p.parent)  # AF_UNIX addresses are short: bind the bare name
        try:
            s = socket.socket(socket.AF_UNIX)
            s.bind(p.name)
            s.close()
        finally:
            os.chdir(cwd)

    add("socket", None, "refused", write=make_socket)
    body = csv_bytes(EVENTS, [ev(SECRET + "-hidden", 0)])
    add("hidden-file", body, "skipped", file=".hidden.csv")
    add("in-progress-tmp", body + b"\n", "skipped", file="late.csv.tmp")
    add("in-progress-part", body + b"\n\n", "skipped", file="late.csv.part")
    add("unknown-extension", csv_bytes(EVENTS, good_events("txt", 1)), "refused", ext=".txt")
    add(
        "upper-case-extension",
        csv_bytes(EVENTS, good_events("upper", 1)),
        "ingested",
        1,
        1,
        ext=".CSV",
    )
    add(
        "name-with-newline",
        csv_bytes(EVENTS, good_events("nlname", 1)),
        "ingested",
        1,
        1,
        file="zz-new\nline.csv",
    )
    cases.append(
        Case(
            "name-not-utf8",
            "events",
            os.fsdecode(b"zz-bad-\xff.csv"),
            "refused",
            write=lambda p: p.write_bytes(csv_bytes(EVENTS, good_events("badname", 1))),
        )
    )

    return cases


def write(root: Path, cases: list[Case]) -> None:
    """Write the cases of ``build(root)``, the files they link to, and a good neighbour each."""
    landing, outside = root / "landing", root / "outside"
    for kind in ("items", "users", "events"):
        (landing / kind).mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.csv"
    secret.write_bytes(csv_bytes(EVENTS, [ev(SECRET, k) for k in range(3)]))
    (outside / "dir.csv").mkdir()
    store = landing / ".store"  # not a kind folder: its files are reached only by links
    store.mkdir()
    (store / "hop.csv").symlink_to(secret)
    (store / "inside.csv").write_bytes(csv_bytes(EVENTS, good_events("linkin", 2)))
    for i, case in enumerate(cases):
        assert case.write is not None
        case.write(landing / case.kind / case.file)
        name, body = good_neighbour(case, i)
        (landing / case.kind / name).write_bytes(body)


def good_neighbour(case: Case, index: int) -> tuple[str, bytes]:
    """(file name, bytes) of a good file that sorts right after ``case``'s file."""
    prefix = case.file[:3]
    name = f"{prefix}-~good.csv" if prefix.isdigit() else f"zzz-{index:03d}-good.csv"
    if case.kind == "items":
        body = csv_bytes(["item_id", "title"], [[f"it-good-{index}", "Good"]])
    elif case.kind == "users":
        body = csv_bytes(["user_id"], [[f"us-good-{index}"]])
    else:
        body = csv_bytes(EVENTS, [ev(f"good{index}", 0)])
    return name, body
