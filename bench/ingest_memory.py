"""Peak memory of ingest against file size: bounded by configuration, not by the file.

Each (size, reader) runs in its own process, so its peak RSS is its own. "duckdb" is a
clean CSV read by DuckDB under NIGHTREC_DUCKDB_MEMORY; "row-by-row" is the same file with
one ragged record at the end, which sends the whole file through the Python reader
(batches of IngestConfig.chunk_rows). A baseline row (an empty landing folder) shows
what importing and opening the warehouse costs.

    python bench/ingest_memory.py [--rows 100000 400000 1600000] [--memory 256MB]

Prints one table: rows, file MB, reader, peak RSS MB, RSS above baseline, seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, time
from pathlib import Path
from nightrec.config import IngestConfig, Settings
from nightrec.ingest import ingest
home = Path(sys.argv[1])
t = time.perf_counter()
tot = ingest(Settings.from_env(home=home, models_dir=home / "m"),
             config=IngestConfig(chunk_rows=int(sys.argv[2]))).totals
print(tot["loaded"], tot["rejected"], tot["files_quarantined"],
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""
HEADER = "user_id,item_id,event_type,ts,value,note\n"
LINE = "u{0},i{1},view,2026-10-{2:02d}T10:{3:02d}:{4:02d}Z,{5},some words of padding {0}\n"


def write_events(path: Path, rows: int, ragged: bool) -> int:
    """An events CSV of ``rows`` distinct good rows (plus one ragged record); its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write(HEADER)
        for k in range(rows):
            fh.write(LINE.format(k, k % 997, 1 + k % 28, k % 60, k // 60 % 60, k % 5))
        if ragged:
            fh.write("u,i,view\n")
    return path.stat().st_size


def measure(home: Path, memory: str, chunk_rows: int) -> tuple[int, int, int, float, float]:
    """(loaded, rejected, quarantined, peak RSS MB, seconds) of one ingest in a subprocess."""
    env = {**os.environ, "NIGHTREC_DUCKDB_MEMORY": memory}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(home), str(chunk_rows)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    loaded, rejected, quarantined, peak_kb, secs = out.stdout.splitlines()[-1].split()
    return int(loaded), int(rejected), int(quarantined), int(peak_kb) / 1024, float(secs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    p.add_argument("--memory", default="256MB", help="NIGHTREC_DUCKDB_MEMORY for every run")
    p.add_argument("--chunk-rows", type=int, default=50_000)
    args = p.parse_args()
    print(f"NIGHTREC_DUCKDB_MEMORY={args.memory}, chunk_rows={args.chunk_rows}")
    print(f"{'rows':>10} {'file MB':>8} {'reader':>11} {'peak MB':>8} {'above base':>10} {'s':>6}")
    with tempfile.TemporaryDirectory(prefix="nightrec-bench-") as tmp:
        base_home = Path(tmp) / "base"
        (base_home / "landing" / "events").mkdir(parents=True)
        *_, base, _ = measure(base_home, args.memory, args.chunk_rows)
        print(f"{0:>10} {0:>8.1f} {'(baseline)':>11} {base:>8.0f} {0:>10.0f} {'':>6}")
        for rows in args.rows:
            for ragged in (False, True):
                home = Path(tmp) / f"h{rows}{ragged}"
                size = write_events(home / "landing" / "events" / "big.csv", rows, ragged)
                t = time.perf_counter()
                loaded, rejected, quarantined, peak, secs = measure(
                    home, args.memory, args.chunk_rows
                )
                assert (loaded, rejected, quarantined) == (rows, int(ragged), 0), (
                    loaded,
                    rejected,
                    quarantined,
                    time.perf_counter() - t,
                )
                reader = "row-by-row" if ragged else "duckdb"
                print(
                    f"{rows:>10,} {size / 1e6:>8.1f} {reader:>11} {peak:>8.0f} "
                    f"{peak - base:>10.0f} {secs:>6.1f}"
                )


if __name__ == "__main__":
    main()
