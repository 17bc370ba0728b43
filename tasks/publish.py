"""Publish a run's scores atomically as a new serving version, and record the run.

``serving/versions/<id>/`` holds ``serving.duckdb`` (tables ``recommendations`` and
``serving_info``) and ``recommendations.parquet``. It is built under a temporary name,
checked (``sql/check_recommendations.sql``), renamed into place, and then
``serving/current`` (a symlink) is swapped to it in one ``rename``: a reader opening
``serving/current/serving.duckdb`` sees the old version or the new one, never a
half-written one. The previous versions stay for ``nightrec rollback``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from nightrec import db
from nightrec.config import ContractError, Settings, safe_id

log = logging.getLogger(__name__)

SERVING_DB = "serving.duckdb"
KEEP_VERSIONS = 3  # current plus two to roll back to


def shard_results(scores_dir: Path) -> list[dict]:
    """The stats of every shard of a run; fails if a shard is missing or unfinished."""
    done = sorted(scores_dir.glob("shard-*-of-*/_SUCCESS.json"))
    if not done:
        raise ContractError(f"no finished scoring shard under {scores_dir}: run `nightrec score`")
    stats = [json.loads(p.read_text()) for p in done]
    expected = stats[0]["num_shards"]
    got = sorted(s["shard"] for s in stats)
    if got != list(range(expected)) or len({s["model_version"] for s in stats}) != 1:
        raise ContractError(f"{scores_dir}: shards {got} of {expected} finished, or mixed models")
    return stats


def _swap_current(serving: Path, target: str) -> None:
    link, tmp = serving / "current", serving / f".current.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(Path("versions") / target, target_is_directory=True)
    os.replace(tmp, link)


def publish(settings: Settings, run_id: str, as_of: dt.date) -> dict:
    """Build, check and swap in the serving version of ``run_id``; record the run."""
    started = time.perf_counter()
    scores = settings.scores_dir(run_id)
    stats = shard_results(scores)
    parts = sorted(str(p) for p in scores.glob("shard-*-of-*/part-*.parquet"))
    digest = hashlib.sha256(run_id.encode())
    for p in parts:
        digest.update(Path(p).read_bytes())
    serving_id = f"{as_of:%Y%m%d}-{digest.hexdigest()[:10]}"
    versions = settings.serving / "versions"
    final = versions / serving_id
    generated_at = dt.datetime.combine(as_of, dt.time(), dt.UTC)  # the run's logical date
    model_version = stats[0]["model_version"]
    if not (final / SERVING_DB).is_file():
        tmp = versions / f".{serving_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with db.connect(tmp / SERVING_DB, read_only=False) as con:
            con.execute("begin")
            db.run(
                con,
                "publish_recommendations",
                {
                    "parts": parts,
                    "model_version": model_version,
                    "run_id": run_id,
                    "generated_at": generated_at,
                },
            )
            con.execute(
                "create table serving_info as select $run_id as run_id, $as_of::date as as_of, "
                "$model_version as model_version, $serving_id as serving_id, "
                "(select count(*) from recommendations) as rows, "
                "(select count(distinct user_id) from recommendations) as users",
                {
                    "run_id": run_id,
                    "as_of": as_of,
                    "model_version": model_version,
                    "serving_id": serving_id,
                },
            )
            con.execute("commit")
            bad = db.frame(con, "check_recommendations")
            if bad.height:
                raise ContractError(f"recommendations of {run_id} fail checks: {bad.rows()[:5]}")
            con.execute(
                "copy recommendations to $path (format parquet)",
                {"path": str(tmp / "recommendations.parquet")},
            )
            rows, users = db.one(con, "select rows, users from serving_info")
        shutil.rmtree(tmp / f"{SERVING_DB}.tmp", ignore_errors=True)  # DuckDB spill folder
        tmp.rename(final)
    else:
        with db.connect(final / SERVING_DB, read_only=True) as con:
            rows, users = db.one(con, "select rows, users from serving_info")
        log.info("publish: %s already built from these scores; re-pointing only", serving_id)
    _swap_current(settings.serving, serving_id)
    _prune(versions, keep=KEEP_VERSIONS, current=serving_id)
    seconds = time.perf_counter() - started
    record_run(settings, run_id, as_of, model_version, serving_id, stats, rows, seconds)
    log.info(
        "publish: %s -> %s: %d rows for %d users in %.1fs (%.0f rows/s)",
        run_id,
        final,
        rows,
        users,
        seconds,
        rows / max(seconds, 1e-9),
    )
    return {
        "serving_id": serving_id,
        "path": str(settings.serving / "current" / SERVING_DB),
        "rows": rows,
        "users": users,
        "seconds": seconds,
    }


def _prune(versions: Path, keep: int, current: str) -> None:
    """Drop the oldest serving versions beyond ``keep`` (never the current one)."""
    done = sorted(
        (p for p in versions.iterdir() if not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    for old in done[:-keep]:
        if old.name != current:
            shutil.rmtree(old)


def record_run(
    settings: Settings,
    run_id: str,
    as_of: dt.date,
    model_version: str,
    serving_id: str,
    stats: list[dict],
    rows: int,
    publish_seconds: float,
) -> None:
    with db.connect(settings.warehouse) as con:
        db.run(
            con,
            "record_run",
            {
                "run_id": run_id,
                "as_of": as_of,
                "model_version": model_version,
                "serving_id": serving_id,
                "provider": stats[0]["provider"],
                "published_at": dt.datetime.now(dt.UTC),
            },
        )
        db.record_metrics(
            con,
            run_id,
            "score",
            {
                "users": sum(s["users"] for s in stats),
                "users_cold": sum(s["users_cold"] for s in stats),
                "rows": sum(s["rows"] for s in stats),
                "seconds": max(s["seconds"] for s in stats),
            },
        )
        db.record_metrics(con, run_id, "publish", {"rows": rows, "seconds": publish_seconds})
        for step, values in _upstream_metrics(settings, as_of, model_version).items():
            db.record_metrics(con, run_id, step, values)


def _upstream_metrics(settings: Settings, as_of: dt.date, model_version: str) -> dict:
    """Counts and timings the earlier steps left beside their outputs (numbers only)."""
    snap = settings.snapshot_dir(as_of)
    found = {}
    for step, path, key in (
        ("snapshot", snap / "snapshot.json", None),
        ("embed", snap / "embed.json", None),
        ("train", settings.models_dir / model_version / "manifest.json", "metrics"),
    ):
        if path.is_file():
            data = json.loads(path.read_text())
            data = data.get(key, {}) if key else data
            flat = {**data.pop("rows", {}), **data} if step == "snapshot" else data
            found[step] = {k: v for k, v in flat.items() if isinstance(v, int | float)}
    return found


def rollback(settings: Settings) -> str:
    """Point ``serving/current`` at the version published before the current one."""
    link = settings.serving / "current"
    if not link.is_symlink():
        raise ContractError(f"nothing published under {settings.serving}")
    now = link.resolve().name
    versions = sorted(
        (p for p in (settings.serving / "versions").iterdir() if not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
    )
    names = [p.name for p in versions]
    if now not in names or names.index(now) == 0:
        raise ContractError(f"no serving version older than {now} to roll back to")
    previous = names[names.index(now) - 1]
    _swap_current(settings.serving, safe_id(previous, "serving version"))
    log.info("rollback: serving/current %s -> %s", now, previous)
    return previous
