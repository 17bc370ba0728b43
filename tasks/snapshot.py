"""Cut the warehouse at a date into Parquet files that the later steps read.

Training and scoring read these files, never the warehouse itself, so they do not
hold DuckDB's single-writer lock and a re-run for the same date sees the same data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from pathlib import Path

from nightrec import db
from nightrec.config import ContractError, Settings, check_as_of

log = logging.getLogger(__name__)

FILES = ("interactions", "items", "users", "rules")  # rules: the business-rule lists


def cutoff_of(as_of: dt.date) -> dt.datetime:
    """Data of ``as_of`` is included: everything strictly before the next midnight UTC."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time(), dt.UTC)


def snapshot(settings: Settings, as_of: dt.date) -> Path:
    """Write ``snapshots/<as_of>/{interactions,items,users,rules}.parquet`` atomically."""
    started = time.perf_counter()
    check_as_of(as_of)
    out = settings.snapshot_dir(as_of)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cutoff = cutoff_of(as_of)
    counts = {}
    with db.connect(settings.warehouse, read_only=True) as con:
        for name in FILES:
            params = {} if name in ("items", "rules") else {"cutoff": cutoff}
            frame = db.frame(con, f"snapshot_{name}", params)
            frame.write_parquet(tmp / f"{name}.parquet")
            counts[name] = frame.height
    if counts["items"] == 0:
        shutil.rmtree(tmp)
        raise ContractError(f"no items in {settings.warehouse}: ingest an item catalog first")
    (tmp / "snapshot.json").write_text(
        json.dumps(
            {
                "as_of": as_of.isoformat(),
                "cutoff": cutoff.isoformat(),
                "rows": counts,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    )
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    log.info(
        "snapshot %s: %d interactions, %d items, %d users in %.1fs -> %s",
        as_of,
        counts["interactions"],
        counts["items"],
        counts["users"],
        time.perf_counter() - started,
        out,
    )
    return out
