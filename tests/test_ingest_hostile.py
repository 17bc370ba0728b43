"""Hostile landing files: ingest never crashes, loses nothing, loads nothing invalid, and
never reads outside the landing folder.

The corpus (``hostile_corpus.py``) is ingested in one run, each hostile file followed by a
good one; every case is then checked on its own. Property tests (hypothesis) add random
column names, random bytes in fields and random timestamps and values, each example on a
fresh warehouse. A memory test ingests files of two sizes in subprocesses.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import hostile_corpus as hc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from nightrec import landing_csv, landing_read
from nightrec.config import EVENT_TYPES, IngestConfig, Settings
from nightrec.ingest import IngestResult, ingest
from nightrec.landing import show

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CFG = IngestConfig(now=NOW)
MIN_TS, MAX_TS = CFG.ts_bounds()
CASES = {c.name: c for c in hc.build(Path("/nonexistent"))}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def query(warehouse: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@dataclasses.dataclass
class CorpusRun:
    root: Path
    settings: Settings
    first: IngestResult
    second: IngestResult
    logs: list[logging.LogRecord]
    counts_after_first: dict[str, int]
    counts_after_second: dict[str, int]
    con: duckdb.DuckDBPyConnection  # read-only, opened after both runs

    def path(self, case: hc.Case) -> str:
        return str(self.settings.landing / case.kind / case.file)

    def q(self, sql: str, params: list | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()


TABLES = ("events", "items", "users", "rejected_rows", "ingested_files", "quarantined_files")


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    root = tmp_path_factory.mktemp("hostile")
    cases = hc.build(root)
    hc.write(root, cases)
    settings = Settings.from_env(home=root, models_dir=root / "models")
    keep = _Keep()
    logger = logging.getLogger("nightrec")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(keep)
    try:
        first = ingest(settings, config=CFG)  # must not raise
        counts1 = {t: query(settings.warehouse, f"select count(*) from {t}")[0][0] for t in TABLES}
        second = ingest(settings, config=CFG)
        counts2 = {t: query(settings.warehouse, f"select count(*) from {t}")[0][0] for t in TABLES}
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old_level)
    con = duckdb.connect(str(settings.warehouse), read_only=True)
    try:
        yield CorpusRun(root, settings, first, second, keep.records, counts1, counts2, con)
    finally:
        con.close()


def _nothing_of(run: CorpusRun, path: str) -> None:
    if not path.isprintable() and path != path.encode("utf-8", "replace").decode():
        return  # a name that is not UTF-8 cannot even be stored
    for table in ("events", "items", "users", "rejected_rows"):
        got = run.q(f"select count(*) from {table} where source_file = ?", [path])[0][0]
        assert got == 0, f"{table} holds rows of {path!r}"
    assert not run.q("select 1 from ingested_files where file_path = ?", [path])


def _books(run: CorpusRun, case: hc.Case, path: str) -> None:
    """rows in = loaded + rejected + duplicates, from the warehouse tables."""
    (total, loaded, rejected, dups), *more = run.q(
        "select rows_total, rows_loaded, rows_rejected, rows_duplicate from ingested_files "
        "where file_path = ?",
        [path],
    )
    assert not more
    assert total == loaded + rejected + dups
    assert (
        rejected == run.q("select count(*) from rejected_rows where source_file = ?", [path])[0][0]
    )
    if case.kind != "items":  # items are upserted: loaded counts distinct items
        table = case.kind
        assert loaded == run.q(f"select count(*) from {table} where source_file = ?", [path])[0][0]
    bad = run.q(
        "select row_number, reason from rejected_rows where source_file = ? "
        "and (row_number is null or row_number < 1 or row_number > ? or reason = '')",
        [path, total],
    )
    assert not bad, bad


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file(run: CorpusRun, name: str) -> None:
    case = CASES[name]
    path = run.path(case)
    files = {f.path: f for f in run.first.files}
    refused = {p for p, _ in run.first.refused}
    # the good file sorted right after it still loads
    index = list(CASES).index(name)
    neighbour, _ = hc.good_neighbour(case, index)
    good = run.q(
        "select rows_loaded from ingested_files where file_path = ?",
        [str(run.settings.landing / case.kind / neighbour)],
    )
    assert good == [(1,)], f"the good file after {name} did not load"

    outcome = case.outcome
    if outcome == "either":
        outcome = "quarantined" if files[path].quarantined else "ingested"
    if outcome == "ingested":
        res = files[path]
        assert not res.quarantined and not res.skipped, res.reason
        if case.rows is not None:
            assert (res.rows, res.loaded) == (case.rows, case.loaded), res
        _books(run, case, path)
        if case.rejected is not None:
            got = run.q("select row_number, field from rejected_rows where source_file = ?", [path])
            assert dict(got) == case.rejected
        assert run.second.files[list(files).index(path)].skipped
    elif outcome == "quarantined":
        res = files[path]
        assert res.quarantined and res.reason, res
        rows = run.q("select reason, retry from quarantined_files where file_path = ?", [path])
        assert len(rows) == 1 and rows[0][0] and rows[0][1] is False, (
            rows
        )  # not an unexpected error
        _nothing_of(run, path)
        assert any(
            r.levelno == logging.WARNING and "quarantined" in r.getMessage() and show(path) in
            r.getMessage() for r in run.logs
        )  # fmt: skip
        second = {f.path: f for f in run.second.files}[path]
        assert second.skipped and "quarantined before" in (second.reason or "")
    elif outcome == "refused":
        assert show(path) in refused
        assert path not in files
        _nothing_of(run, path)
        assert any(r.levelno == logging.WARNING and show(path) in r.getMessage() for r in run.logs)
    else:  # skipped: hidden or still being written
        assert path not in files and show(path) not in refused
        _nothing_of(run, path)
        assert any(r.levelno == logging.INFO and show(path) in r.getMessage() for r in run.logs)


def test_run_counts_quarantined_and_refused_files(run: CorpusRun) -> None:
    tot = run.first.totals
    want = sum(c.outcome == "quarantined" for c in CASES.values())
    assert want <= tot["files_quarantined"] <= want + 1  # + the random-bytes file, maybe
    assert tot["files_refused"] == sum(c.outcome == "refused" for c in CASES.values())
    assert tot["rows"] == tot["loaded"] + tot["rejected"] + tot["duplicates"]
    # the second run reads nothing again and quarantines nothing new
    tot2 = run.second.totals
    assert tot2["files_new"] == tot2["files_quarantined"] == 0
    assert tot2["files_skipped"] == len(run.first.files)
    assert run.counts_after_second == run.counts_after_first
    assert any("files quarantined" in r.getMessage() for r in run.logs)


def test_ignored_columns_are_logged_once_per_file(run: CorpusRun) -> None:
    path = show(run.path(CASES["col-p_key"]))
    said = [r for r in run.logs if "ignored columns" in r.getMessage() and path in r.getMessage()]
    assert len(said) == 1 and "'p_key'" in said[0].getMessage()
    # the raw row of a rejected row keeps the ignored columns
    raw = run.q(
        "select raw from rejected_rows where source_file = ?",
        [run.path(CASES["col-p_user_id-p_ts"])],
    )
    assert any('"p_user_id":"u-x"' in r[0] for r in raw), raw


def test_no_value_outside_the_valid_range_is_loaded(run: CorpusRun) -> None:
    for table, ids, stamps in (
        ("events", ("event_id", "user_id", "item_id"), ("ts",)),
        ("items", ("item_id",), ("updated_at",)),
        ("users", ("user_id",), ("created_at",)),
    ):
        for col in ids:
            for (value,) in run.q(f"select {col} from {table}"):
                assert value and len(value) <= CFG.max_id_length, (table, col, value)
                assert not CONTROL.search(value), (table, col, value)
        for col in stamps:
            for (value,) in run.q(f"select {col} from {table} where {col} is not null"):
                assert MIN_TS <= value <= MAX_TS, (table, col, value)
    for (value,) in run.q("select value from events where value is not null"):
        assert math.isfinite(value) and abs(value) <= CFG.max_abs_value
    assert {r[0] for r in run.q("select distinct event_type from events")} <= set(EVENT_TYPES)
    for row in run.q("select title, description, category, brand, tags from items"):
        for text in row:
            assert text is None or not TEXT_CONTROL.search(text), row


def test_nothing_outside_landing_is_read(run: CorpusRun) -> None:
    markers = [hc.SECRET]
    if Path("/etc/passwd").is_file():
        first = Path("/etc/passwd").read_text().splitlines()[0]
        markers.append(first.split(":")[0] + ":x:")  # e.g. 'root:x:'
    for table in TABLES:
        columns = [
            r[0]
            for r in run.q(
                "select column_name from information_schema.columns "
                "where table_name = ? and data_type = 'VARCHAR'",
                [table],
            )
        ]
        for col in columns:
            for marker in markers:
                hits = run.q(f"select count(*) from {table} where contains({col}, ?)", [marker])
                assert hits == [(0,)], f"{marker!r} found in {table}.{col}"


def test_a_link_from_landing_to_outside_as_a_kind_folder_is_refused(tmp_path: Path) -> None:
    settings = Settings.from_env(home=tmp_path / "home", models_dir=tmp_path / "m")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.csv").write_bytes(hc.csv_bytes(hc.EVENTS, hc.good_events(hc.SECRET, 2)))
    settings.landing.mkdir(parents=True)
    (settings.landing / "events").symlink_to(outside)
    res = ingest(settings, config=CFG)
    assert res.totals["files_refused"] == 1 and res.totals["files_new"] == 0
    assert query(settings.warehouse, "select count(*) from events") == [(0,)]


def test_an_unexpected_failure_is_retried_and_a_fixed_file_loads(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = settings.landing / "events"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_bytes(hc.csv_bytes(hc.EVENTS, hc.good_events("retry", 2)))
    bad = folder / "b.csv"
    bad.write_bytes(b"\n")  # no header: quarantined, not retried while the bytes stay
    (folder / "c.csv").write_bytes(hc.csv_bytes(hc.EVENTS, hc.good_events("after", 1)))

    real = landing_csv.count_csv_records

    def flaky(path: Path, block: int = 1 << 22) -> tuple[int, bool]:
        if path.name == "a.csv":
            raise RuntimeError("simulated failure outside the file")
        return real(path, block)

    monkeypatch.setattr(landing_csv, "count_csv_records", flaky)
    tot = ingest(settings, config=CFG).totals
    assert (tot["files_new"], tot["files_quarantined"]) == (1, 2)
    retry = dict(query(settings.warehouse, "select file_path, retry from quarantined_files"))
    assert retry == {str(folder / "a.csv"): True, str(bad): False}

    monkeypatch.setattr(landing_csv, "count_csv_records", real)
    tot = ingest(settings, config=CFG).totals  # a.csv again; b.csv not
    assert (tot["files_new"], tot["files_quarantined"], tot["loaded"]) == (1, 0, 2)
    bad.write_bytes(hc.csv_bytes(hc.EVENTS, hc.good_events("fixed", 1)))  # a new checksum
    tot = ingest(settings, config=CFG).totals
    assert (tot["files_new"], tot["loaded"]) == (1, 1)
    assert query(settings.warehouse, "select count(*) from events") == [(4,)]
    assert query(settings.warehouse, "select file_path from quarantined_files") == [(str(bad),)]


# ---------------------------------------------------------------- properties

PROPS = hsettings(
    max_examples=20,
    database=None,  # no .hypothesis folder in the working tree
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FAST = hsettings(max_examples=200, database=None, deadline=None)  # pure functions, no DuckDB
CONTRACT = {"event_id", "user_id", "item_id", "event_type", "ts", "value"}
column_names = st.one_of(
    st.sampled_from(hc.INTERNAL),
    st.text(min_size=1, max_size=12).filter(
        lambda s: (
            s.isprintable()
            and s.casefold() not in {c.casefold() for c in CONTRACT}
            and not re.fullmatch(r"column\d+", s, re.I)
        )
    ),
)


def _fresh() -> tuple[Settings, tempfile.TemporaryDirectory]:
    tmp = tempfile.TemporaryDirectory(prefix="nightrec-prop-")
    home = Path(tmp.name)
    return Settings.from_env(home=home / "home", models_dir=home / "m"), tmp


def _write(folder: Path, fmt: str, header: list[str], rows: list[list[str | None]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"f.{fmt}"
    if fmt == "csv":
        buf = io.StringIO()
        # CRLF: the writer then quotes every field holding CR or LF (with "\n" alone it
        # leaves a bare CR, which ends a record, as RFC 4180 and ingest read it)
        csv.writer(buf, lineterminator="\r\n").writerows([header, *rows])
        path.write_bytes(buf.getvalue().encode("utf-8", "surrogateescape"))
    elif fmt == "jsonl":
        lines = [json.dumps(dict(zip(header, r, strict=True))) for r in rows]
        path.write_text("".join(line + "\n" for line in lines))
    else:
        cols = {h: pa.array([r[i] for r in rows], pa.string()) for i, h in enumerate(header)}
        pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_extra_columns_named_like_the_row_alias_are_only_extra_columns(fmt: str) -> None:
    """Found by the property below: a CSV with an extra column ``T`` was quarantined, as
    DuckDB read that column where the load SQL meant the whole row (aliased ``t``)."""
    settings, tmp = _fresh()
    with tmp:
        header = [*hc.EVENTS, "T", "t1", "_rec"]
        rows: list[list[str | None]] = [[*hc.ev("alias", k), "", "x", "y"] for k in range(3)]
        rows.append([*hc.ev("alias", 3, user_id=""), "", "x", "y"])
        _write(settings.landing / "events", fmt, header, rows)
        tot = ingest(settings, config=CFG).totals
        assert (tot["files_new"], tot["rows"], tot["loaded"], tot["rejected"]) == (1, 4, 3, 1)
        assert query(settings.warehouse, "select user_id from events order by user_id") == [
            (f"u-alias-{k}",) for k in range(3)
        ]
        assert query(settings.warehouse, "select row_number, field from rejected_rows") == [
            (4, "user_id")
        ]


@PROPS
@given(
    extra=st.lists(column_names, min_size=1, max_size=4, unique_by=str.casefold),
    values=st.lists(st.text(max_size=20), min_size=4, max_size=4),
    fmt=st.sampled_from(["csv", "jsonl", "parquet"]),
)
def test_extra_columns_never_change_what_loads(extra: list[str], values: list[str], fmt: str):
    settings, tmp = _fresh()
    with tmp:
        header = [*hc.EVENTS, *extra]
        rows: list[list[str | None]] = [
            [*hc.ev("prop", k), *[values[k]] * len(extra)] for k in range(3)
        ]
        rows.append([*hc.ev("prop", 3, user_id=""), *[values[3]] * len(extra)])
        path = _write(settings.landing / "events", fmt, header, rows)
        tot = ingest(settings, config=CFG).totals
        assert (tot["files_new"], tot["rows"], tot["loaded"], tot["rejected"]) == (1, 4, 3, 1)
        wh = settings.warehouse
        assert query(wh, "select user_id from events order by user_id") == [
            (f"u-prop-{k}",) for k in range(3)
        ]
        assert query(wh, "select row_number, field from rejected_rows") == [(4, "user_id")]
        assert query(wh, "select source_file from events limit 1") == [(str(path),)]


field_text = st.text(
    st.characters(blacklist_categories=("Cs",)), max_size=12
)  # control characters, quotes, line breaks and all


@PROPS
@given(
    rows=st.lists(st.lists(field_text, min_size=5, max_size=5), min_size=1, max_size=6),
    junk=st.lists(st.binary(max_size=8), min_size=6, max_size=6),
)
def test_random_bytes_in_fields_never_break_the_books(rows: list[list[str]], junk: list[bytes]):
    settings, tmp = _fresh()
    with tmp:
        # an ignored column of raw bytes (not UTF-8, most of them) beside random text fields
        raw = [j.decode("utf-8", "surrogateescape") for j in junk]
        body = [[*r, raw[i]] for i, r in enumerate(rows)]
        path = _write(settings.landing / "events", "csv", [*hc.EVENTS, "junk"], body)
        res = ingest(settings, config=CFG)  # must not raise
        (f,) = res.files
        wh = settings.warehouse
        if f.quarantined:  # only a line break in a one-line field may do that
            assert "line break" in (f.reason or ""), f.reason
            assert query(wh, "select retry from quarantined_files") == [(False,)]
            return
        assert f.rows == len(rows)
        assert f.rows == f.loaded + f.rejected + f.duplicates
        assert query(
            wh, "select count(*) from rejected_rows where source_file = ?", [str(path)]
        ) == [(f.rejected,)]
        for user, item, etype, ts, value in query(
            wh, "select user_id, item_id, event_type, ts, value from events"
        ):
            assert not CONTROL.search(user + item) and etype in EVENT_TYPES
            assert MIN_TS <= ts <= MAX_TS
            assert value is None or math.isfinite(value)


timestamps = st.one_of(
    st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.just(dt.UTC),
    ).map(lambda d: (d.isoformat(), d)),
    st.integers(100_000_000, 9_999_999_999).map(
        lambda s: (str(s), dt.datetime.fromtimestamp(s, dt.UTC))
    ),
    st.sampled_from(["infinity", "-infinity", "epoch", "now", "", "0"]).map(lambda s: (s, None)),
)
values = st.one_of(st.none(), st.floats(), st.integers(-(10**12), 10**12))


@PROPS
@given(cells=st.lists(st.tuples(timestamps, values), min_size=1, max_size=8))
def test_timestamps_and_values_load_exactly_when_in_range(cells: list) -> None:
    settings, tmp = _fresh()
    with tmp:
        rows = [
            hc.ev("rng", k, event_type="rating", ts=ts_text, value="" if v is None else repr(v))
            for k, ((ts_text, _), v) in enumerate(cells)
        ]
        _write(settings.landing / "events", "csv", hc.EVENTS, rows)
        ingest(settings, config=CFG)
        loaded = {r[0] for r in query(settings.warehouse, "select user_id from events")}
        rejected = dict(query(settings.warehouse, "select row_number, field from rejected_rows"))
        for k, ((_, when), v) in enumerate(cells):
            ts_ok = when is not None and MIN_TS <= when <= MAX_TS
            value_ok = v is None or (math.isfinite(v) and abs(v) <= CFG.max_abs_value)
            if ts_ok and value_ok:
                assert f"u-rng-{k}" in loaded, (cells[k], rejected.get(k + 1))
            else:
                assert rejected.get(k + 1) == ("ts" if not ts_ok else "value"), cells[k]


csv_bytes_st = st.lists(st.sampled_from([b"a", b",", b'"', b"\r", b"\n", b"\r\n"]), max_size=40)


@FAST
@given(parts=csv_bytes_st, block=st.integers(1, 7))
def test_record_count_is_rfc_4180_across_block_edges(parts: list[bytes], block: int) -> None:
    """The independent record count agrees with a plain RFC 4180 reading, byte by byte."""
    data = b"".join(parts)
    inside, n, in_record = False, 0, False
    for byte in data:
        inside ^= byte == 34
        if byte in (10, 13) and not inside:
            in_record = False
        elif not in_record:
            n, in_record = n + 1, True
    with tempfile.NamedTemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        assert landing_csv.count_csv_records(Path(fh.name), block) == (n, inside)
    if b'"' not in data:  # and with Python's csv module, where they cannot differ
        rows = csv.reader(io.StringIO(data.decode(), newline=""))
        assert sum(1 for r in rows if r) == n


@FAST
@given(parts=csv_bytes_st, block=st.integers(1, 7), limit=st.integers(1, 6))
def test_json_lines_split_at_every_line_end_across_block_edges(
    parts: list[bytes], block: int, limit: int
) -> None:
    data = b"".join(parts)
    want = re.split(rb"\r\n|\r|\n", data)
    if want[-1] == b"":
        want.pop()  # a final line end ends the last line; it does not start a new one
    got = list(landing_read.lines(io.BytesIO(data), limit, block))
    assert got == [(i + 1, w if len(w) <= limit else None) for i, w in enumerate(want)]


# ---------------------------------------------------------------- memory

_PEAK = """
import resource, sys
from pathlib import Path
from nightrec.config import Settings
from nightrec.ingest import ingest
home = Path(sys.argv[1])
tot = ingest(Settings.from_env(home=home, models_dir=home / "m")).totals
print(tot["loaded"], tot["files_quarantined"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss(tmp: Path, rows: int) -> tuple[int, int]:
    """(file bytes, peak RSS bytes) of ingesting one clean events CSV in a subprocess."""
    home = tmp / f"home-{rows}"
    path = home / "landing" / "events" / "big.csv"
    path.parent.mkdir(parents=True)
    with path.open("w") as fh:
        fh.write("user_id,item_id,event_type,ts,value,note\n")
        line = "u{0},i{1},view,2026-10-{2:02d}T10:{3:02d}:{4:02d}Z,{5},some words of padding {0}\n"
        for k in range(rows):
            fh.write(line.format(k, k % 997, 1 + k % 28, k % 60, k // 60 % 60, k % 5))
    env = {**os.environ, "NIGHTREC_DUCKDB_MEMORY": "96MB"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(home)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, quarantined, peak_kb = map(int, out.stdout.splitlines()[-1].split())
    assert (loaded, quarantined) == (rows, 0)
    return path.stat().st_size, peak_kb * 1024


def test_memory_does_not_follow_the_file_size(tmp_path: Path) -> None:
    """Three times the file (17 -> 52 MB), about the same peak: DuckDB's cap holds.

    The old reader loaded the whole file into Polars first (616 MB -> 5.1 GB peak). The
    row-by-row reader (malformed files) is bounded by its batches; bench/ingest_memory.py
    prints both readers over more sizes.
    """
    small_bytes, small_peak = _peak_rss(tmp_path, 250_000)
    big_bytes, big_peak = _peak_rss(tmp_path, 750_000)
    assert big_peak - small_peak < 0.3 * (big_bytes - small_bytes), (small_peak, big_peak)
