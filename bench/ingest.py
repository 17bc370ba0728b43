"""Ingest speed against bare DuckDB reading the same file into a table, in one run.

For each format (CSV, Parquet) and each kind of events file (with event ids; without,
so the key is the SHA-256 of the row's content), one file of ``--rows`` events is
written once, then, alternating, ``--repeat`` times:

- "duckdb": a fresh DuckDB file, ``create table t as select * from read_csv/read_parquet``
  (types detected, no validation, nothing kept of bad rows): the floor;
- "nightrec": a fresh warehouse, ``nightrec.ingest`` (checksum, the independent record
  count, validation of every field, rejected rows kept, duplicates dropped, books
  balanced, one transaction).

A dirty case (1% of rows with a bad timestamp) shows the cost of keeping rejected rows.
Prints medians, rows/s and the ratio to the floor; this machine is shared, so quote the
ratio of the medians.

    python bench/ingest.py [--rows 2000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def write_events(path: Path, rows: int, ids: bool, dirty: float) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(7)
    ts = pl.Series((1_790_000_000 + rng.integers(0, 30 * 86_400, rows)) * 1_000_000)
    cols = {"event_id": [f"e{i}" for i in range(rows)]} if ids else {}
    df = pl.DataFrame(
        cols
        | {
            "user_id": [f"u{x}" for x in rng.integers(0, max(rows // 20, 1), rows)],
            "item_id": [f"i{x}" for x in rng.integers(0, 50_000, rows)],
            "event_type": rng.choice(["view", "click", "purchase"], rows),
            "ts": ts.cast(pl.Datetime("us")).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "value": rng.integers(1, 6, rows).astype(str),
        }
    )
    if dirty:
        bad = pl.Series(rng.random(rows) < dirty)
        df = df.with_columns(pl.when(bad).then(pl.lit("yesterday")).otherwise("ts").alias("ts"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.write_csv(path)
    else:
        df.write_parquet(path)


def bare(path: Path, work: Path) -> float:
    import duckdb

    db = work / "bare.duckdb"
    db.unlink(missing_ok=True)
    reader = "read_csv" if path.suffix == ".csv" else "read_parquet"
    t = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute(f"create table t as select * from {reader}($p)", {"p": str(path)})  # fixed SQL text
    con.close()
    return time.perf_counter() - t


def nightrec(landing: Path, work: Path, rows: int) -> float:
    from nightrec.config import Settings
    from nightrec.ingest import ingest

    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings.from_env(home=home, models_dir=home / "models")
    t = time.perf_counter()
    tot = ingest(settings, landing=landing).totals
    took = time.perf_counter() - t
    if tot["rows"] != rows or tot["loaded"] + tot["rejected"] + tot["duplicates"] != rows:
        raise SystemExit(f"books do not balance: {tot}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nightrec-bench-ingest-"))
    cases = [
        (fmt, ids, dirty)
        for fmt in ("csv", "parquet")
        for ids, dirty in ((True, 0.0), (False, 0.0), (True, 0.01))
    ]
    lines = [
        "| format | file | duckdb s | nightrec s | duckdb M rows/s | nightrec M rows/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt, ids, dirty in cases:
        name = ("ids" if ids else "no ids") + (f", {dirty:.0%} bad ts" if dirty else "")
        landing = work / f"{fmt}-{int(ids)}-{dirty}" / "landing"
        path = landing / "events" / f"events.{fmt}"
        if not path.is_file():
            write_events(path, args.rows, ids, dirty)
        b, n = [], []
        for _ in range(args.repeat):
            b.append(bare(path, work))
            n.append(nightrec(landing, work, args.rows))
        mb, mn = statistics.median(b), statistics.median(n)
        r = args.rows / 1e6
        lines.append(
            f"| {fmt} | {name} | {mb:.2f} | {mn:.2f} | {r / mb:.2f} | {r / mn:.2f} | "
            f"{mn / mb:.2f}× |"
        )
        print(lines[-1], flush=True)
    print(f"\n{args.rows:,} events per file, medians of {args.repeat} alternating runs\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
