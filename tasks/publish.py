"""Publish a run's scores as a new serving version; move ``current`` only forward.

Layout under ``serving/``::

    versions/<id>/serving.duckdb            recommendations (a view of the Parquet parts)
                                            and serving_info, for readers of one run
    versions/<id>/recommendations/part-<shard>-<part>.parquet
                                            the same rows: the score parts themselves
    versions/<id>/items.parquet             item_id, title, category, active (for readers)
    versions/<id>/similar_items.parquet     item_id, rank, similar_item_id, score (+ run)
    versions/<id>/serving_info.json         run, date, model version, counts
    serving.duckdb                          reader catalog: views over the live version
    current.json                            pointer: the live version and its files
    current -> versions/<id>                symlink, for readers of one DuckDB file
    live.jsonl                              every change of the live version (for rollback)

A version is built under a temporary name from the score parts (their rows were
checked, and their checksums taken, as they were scored, with the run's constant
columns already in them): each part is hard-linked into the version (copied where the
file system cannot link), so publish reads and writes no row. Parts scored without
those columns, or for another date, are rewritten in one DuckDB pass instead. The
folder is renamed into place and completed by ``serving_info.json``; files in a version
folder never change afterwards (parts are written once and replaced only by rename). Going live
swaps ``current.json``, ``current`` and ``serving.duckdb``, each with one ``rename``.

**The serving rule.** A run goes live only if its ``as_of`` is not older than the live
version's (or when ``promote`` forces it); a backfill or a cleared old run still
publishes its version, queryable in ``recommendations_all`` by ``run_id``, without
touching what apps read. ``as_of`` after today is refused. ``rollback`` is the
operator's explicit override.
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

import polars as pl

from nightrec import db, registry
from nightrec.config import ContractError, Settings, check_as_of, safe_id, share_serving
from nightrec.locks import file_lock

log = logging.getLogger(__name__)

# the columns publish adds, which the score step writes into each part as it scores
# (constant per run), so that publish takes the parts as they are instead of rewriting every
# row. Here, not in ``score``: publish must not pay for importing torch
RUN_COLUMNS = ("model_version", "run_id", "generated_at")


def run_columns(model_version: str, run_id: str, as_of: str | None) -> dict | None:
    """The published constant columns of a run (``generated_at``: midnight UTC of its
    ``as_of``), as ``_SUCCESS.json`` lists them; None without an ``as_of``."""
    if not as_of:
        return None
    at = dt.datetime.combine(dt.date.fromisoformat(as_of), dt.time(), dt.UTC)
    return {"model_version": model_version, "run_id": run_id, "generated_at": at.isoformat()}


SERVING_DB = "serving.duckdb"
RECS_DIR = "recommendations"  # a version's rows: part-<shard>-<part>.parquet
RECS_PARQUET = "recommendations.parquet"  # versions built before parts were linked
ITEMS_PARQUET = "items.parquet"
SIMILAR_PARQUET = "similar_items.parquet"
POINTER = "current.json"
HISTORY = "live.jsonl"
KEEP_VERSIONS = 5  # NIGHTREC_KEEP_SERVING: versions kept for rollback and for slow readers


def keep_versions() -> int:
    return max(2, int(os.environ.get("NIGHTREC_KEEP_SERVING", KEEP_VERSIONS)))


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


def check_coverage(stats: list[dict], snapshot_dir: Path, users_published: int) -> None:
    """Fail unless every user of the snapshot got a list, or had nothing left to get.

    The snapshot's users are those of ``users.parquet`` and ``interactions.parquet``. The
    shards (``stats``) must have scored exactly that many, and the published table must
    hold ``users_published`` = all of them but those score found with no unseen active
    item (``users_empty``). A run that silently lost users (``--batch-size -1`` once
    published 7 of 500) stops here instead of going live.
    """
    expected = (
        pl.concat(
            [
                pl.scan_parquet(snapshot_dir / f"{name}.parquet").select("user_id")
                for name in ("users", "interactions")
            ]
        )
        .unique()
        .select(pl.len())
        .collect()
        .item()
    )
    scored = sum(int(s["users"]) for s in stats)
    empty = sum(int(s.get("users_empty", 0)) for s in stats)
    if scored != expected or users_published + empty != expected:
        raise ContractError(
            f"scores of run {stats[0]['run_id']!r} cover {users_published} of the {expected} "
            f"users of snapshot {snapshot_dir.name} ({scored} scored, {empty} with nothing left "
            "to recommend): not published; re-run score"
        )


def live(settings: Settings) -> dict | None:
    """The pointer of the live serving version, or None before the first publish."""
    path = settings.serving / POINTER
    return json.loads(path.read_text()) if path.is_file() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def recs_files(version_dir: Path) -> list[Path]:
    """A version's recommendation files in row order (its parts, or one older file)."""
    folder = version_dir / RECS_DIR
    if folder.is_dir():
        return sorted(folder.glob("part-*.parquet"))
    return [version_dir / RECS_PARQUET]


def recs_pattern(version: Path) -> str:
    """What ``current.json`` names for Parquet readers of a version with parts: a glob of
    them (DuckDB, Polars, Spark read it as is)."""
    return str(version / RECS_DIR / "*.parquet")


def _adopt(src: Path, dst: Path) -> bool:
    """``dst`` as a hard link to ``src`` (True), or a copy where linking is refused."""
    try:
        os.link(src, dst)
        return True
    except OSError:  # another file system, or links not allowed: copy the bytes
        shutil.copyfile(src, dst)
        return False


def part_list(stats: list[dict], scores_dir: Path) -> tuple[list[str], str]:
    """The run's score parts, in shard order, and a digest of their listed checksums.

    Each shard's ``_SUCCESS.json`` lists its parts with the size and SHA-256 taken when
    they were written; a part whose size on disk differs, or that is missing, fails
    here (a cheap stat, no second read of the data). Shards scored before parts were
    listed are hashed from disk.
    """
    digest = hashlib.sha256()
    paths: list[str] = []
    for st in sorted(stats, key=lambda x: x["shard"]):
        folder = scores_dir / f"shard-{st['shard']:05d}-of-{st['num_shards']:05d}"
        listed = st.get("parts")
        if listed is None:  # written by an older nightrec: hash what is there
            listed = [
                {"name": f.name, "sha256": registry.sha256(f), "bytes": f.stat().st_size}
                for f in sorted(folder.glob("part-*.parquet"))
            ]
        on_disk = sorted(f.name for f in folder.glob("part-*.parquet"))
        if on_disk != sorted(x["name"] for x in listed):
            raise ContractError(
                f"{folder}: parts on disk {on_disk} are not the ones scoring listed: re-run score"
            )
        for part in listed:
            path = folder / part["name"]
            if path.stat().st_size != part["bytes"]:
                raise ContractError(
                    f"{path}: {path.stat().st_size} bytes, scoring wrote {part['bytes']}: "
                    "changed since it was scored; re-run score"
                )
            digest.update(f"{st['shard']}/{part['name']}:{part['sha256']}\n".encode())
            paths.append(str(path))
    return paths, digest.hexdigest()


def _copy_similar(
    con, stats: list[dict], scores_dir: Path, out: Path, model_version: str, run_id: str
) -> None:
    """Shard 0's similar items (checked against its listing) into ``out``, with the run's
    model version and id; an empty table when the scores have none."""
    first = min(stats, key=lambda x: x["shard"])
    listed = first.get("similar")
    source = "select null::varchar as item_id, null::integer as rank, "
    source += "null::varchar as similar_item_id, null::float as score where false"
    params: dict[str, object] = {"model_version": model_version, "run_id": run_id}
    if listed:
        folder = scores_dir / f"shard-{first['shard']:05d}-of-{first['num_shards']:05d}"
        path = folder / listed["name"]
        if not path.is_file() or path.stat().st_size != listed["bytes"]:
            raise ContractError(f"{path}: missing or changed since it was scored; re-run score")
        source = "select * from read_parquet($path)"
        params["path"] = str(path)
    con.execute(
        f"copy (select item_id, rank, similar_item_id, score, $model_version as model_version, "
        f"$run_id as run_id from ({source})) to $out (format parquet)",  # fixed SQL text
        params | {"out": str(out)},
    )


def _build_version(
    settings: Settings, run_id: str, as_of: dt.date, stats: list[dict]
) -> tuple[str, int, int]:
    """Build ``versions/<id>`` unless it exists; returns (id, rows, users).

    The score parts (rows already checked by the score step) become the version's
    ``recommendations/`` parts: linked as they are when every shard wrote this run's
    constant columns (``run_columns``), else rewritten by DuckDB in one pass. The
    version's ``serving.duckdb`` holds a view over the parts and ``serving_info``. The
    folder is renamed into place, the view is made at its final path, and
    ``serving_info.json``, written last, marks the version complete.
    """
    parts, parts_digest = part_list(stats, settings.scores_dir(run_id))
    digest = hashlib.sha256(run_id.encode())
    digest.update(parts_digest.encode())
    serving_id = f"{as_of:%Y%m%d}-{digest.hexdigest()[:10]}"
    final = settings.serving / "versions" / serving_id
    if (final / "serving_info.json").is_file():
        log.info("publish: %s already built from these scores", serving_id)
        done = version_info(settings, serving_id)
        return serving_id, done["rows"], done["users"]
    shutil.rmtree(final, ignore_errors=True)  # a build that stopped after its rename
    tmp = final.with_name(f".{serving_id}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_version = stats[0]["model_version"]
    rows = sum(int(s["rows"]) for s in stats)
    users = sum(int(s["users_written"]) for s in stats)
    snapshot_dir = Path(stats[0].get("snapshot") or settings.snapshot_dir(as_of))
    check_coverage(stats, snapshot_dir, users)

    generated_at = dt.datetime.combine(as_of, dt.time(), dt.UTC)
    columns = run_columns(model_version, run_id, as_of.isoformat())
    (tmp / RECS_DIR).mkdir()
    linked = all(st.get("run_columns") == columns for st in stats)
    with db.connect(tmp / SERVING_DB, read_only=False, schema=False) as con:
        if linked:  # the parts are the published rows already: no row is read or written
            copied = 0
            for path in parts:
                src = Path(path)
                shard = src.parent.name.split("-")[1]  # shard-<i>-of-<n>/part-<p>.parquet
                copied += not _adopt(src, tmp / RECS_DIR / f"part-{shard}-{src.name[5:]}")
            log.info(
                "publish: %d score parts taken as they are (%d copied, not linked)",
                len(parts),
                copied,
            )
        else:  # scored by an older nightrec, or for another date: one DuckDB pass
            log.info("publish: the parts lack this run's columns; rewriting %d rows", rows)
            db.run(
                con,
                "publish_recommendations",
                {
                    "parts": parts,
                    "model_version": model_version,
                    "run_id": run_id,
                    "generated_at": generated_at,
                    "path": str(tmp / RECS_DIR / "part-00000-00000.parquet"),
                },
            )
        files = [str(p) for p in recs_files(tmp)]
        got = db.one(con, "select count(*) from read_parquet($p)", {"p": files})
        _copy_similar(
            con, stats, settings.scores_dir(run_id), tmp / SIMILAR_PARQUET, model_version, run_id
        )
    if got[0] != rows:
        raise ContractError(
            f"run {run_id}: {got[0]} rows published but the score shards wrote {rows}: re-run score"
        )
    shutil.rmtree(tmp / f"{SERVING_DB}.tmp", ignore_errors=True)  # DuckDB spill folder
    items = snapshot_dir / "items.parquet"
    pl.read_parquet(items, columns=["item_id", "title", "category", "active"]).write_parquet(
        tmp / ITEMS_PARQUET
    )
    tmp.rename(final)
    with db.connect(final / SERVING_DB, read_only=False, schema=False) as con:
        con.execute(
            "create view recommendations as select * from read_parquet("
            + db.path_literal(recs_files(final.resolve()))
            + ")"
        )
        con.execute(
            "create table serving_info as select $run_id as run_id, $as_of::date as as_of, "
            "$model_version as model_version, $serving_id as serving_id, "
            "$rows::bigint as rows, $users::bigint as users",
            {
                "run_id": run_id,
                "as_of": as_of,
                "model_version": model_version,
                "serving_id": serving_id,
                "rows": rows,
                "users": users,
            },
        )
    info: dict[str, object] = {"serving_id": serving_id, "run_id": run_id}
    info |= {"as_of": as_of.isoformat(), "model_version": model_version}
    info |= {"rows": rows, "users": users}
    _write_atomic(final / "serving_info.json", json.dumps(info, indent=2))  # complete
    share_serving(settings, final)
    return serving_id, rows, users


def publish(settings: Settings, run_id: str, as_of: dt.date, promote: bool = False) -> dict:
    """Build and check the serving version of ``run_id``; take it live if the rule allows."""
    started = time.perf_counter()
    check_as_of(as_of)
    stats = shard_results(settings.scores_dir(run_id))
    serving_id, rows, users = _build_version(settings, run_id, as_of, stats)
    model_version = stats[0]["model_version"]
    with file_lock(settings.serving / ".publish.lock", what="the serving pointer"):
        now = live(settings)
        go_live = promote or now is None or as_of.isoformat() >= now["as_of"]
        if go_live:
            _go_live(settings, serving_id, run_id, as_of, model_version, "forced" * promote)
        else:
            assert now is not None
            log.warning(
                "publish: %s is for %s, older than the live %s (%s): published as %s, "
                "not served (set promote to serve it)",
                run_id,
                as_of,
                now["serving_id"],
                now["as_of"],
                serving_id,
            )
        seconds = time.perf_counter() - started
        record_run(
            settings, run_id, as_of, model_version, serving_id, stats, rows, seconds, go_live
        )
        _prune(settings)
        build_catalog(settings)
    log.info(
        "publish: %s -> %s: %d rows for %d users in %.1fs (%.0f rows/s)%s",
        run_id,
        serving_id,
        rows,
        users,
        seconds,
        rows / max(seconds, 1e-9),
        "; live" if go_live else "; not live",
    )
    return {
        "serving_id": serving_id,
        "served": go_live,
        "path": str(settings.serving / "versions" / serving_id / SERVING_DB),
        "rows": rows,
        "users": users,
        "seconds": seconds,
    }


def _go_live(
    settings: Settings, serving_id: str, run_id: str, as_of: dt.date | str, model: str, why: str
) -> None:
    """Point ``current.json``, ``current`` and the history at ``serving_id`` (lock held)."""
    serving = settings.serving
    version = Path("versions") / serving_id
    pointer = {
        "serving_id": serving_id,
        "run_id": run_id,
        "as_of": str(as_of),
        "model_version": model,
        **(
            {
                "recommendations_parquet": recs_pattern(version),
                "recommendations_dir": str(version / RECS_DIR),
            }
            if (serving / version / RECS_DIR).is_dir()
            else {"recommendations_parquet": str(version / RECS_PARQUET)}
        ),
        "serving_duckdb": str(version / SERVING_DB),
        "items_parquet": str(version / ITEMS_PARQUET),
        "similar_items_parquet": str(version / SIMILAR_PARQUET),
        "live_since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(serving / POINTER, json.dumps(pointer, indent=2))
    share_serving(settings, serving / POINTER)
    link, tmp = serving / "current", serving / f".current.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(version, target_is_directory=True)
    os.replace(tmp, link)
    with (serving / HISTORY).open("a") as fh:
        fh.write(json.dumps({**pointer, "why": why or "publish"}) + "\n")
    share_serving(settings, serving / HISTORY)


def _history(settings: Settings) -> list[dict]:
    path = settings.serving / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def version_info(settings: Settings, serving_id: str) -> dict:
    """A version's ``serving_info.json``: run, date, model version and counts."""
    return json.loads(
        (settings.serving / "versions" / serving_id / "serving_info.json").read_text()
    )


def _live_stack(settings: Settings) -> list[str]:
    """The versions that were live, in order, with the ones stepped back from removed.

    A publish or an explicit rollback to a version pushes it; a plain rollback pops the
    top, so repeated rollbacks walk back one version at a time instead of toggling.
    """
    stack: list[str] = []
    for entry in _history(settings):
        target = entry["serving_id"]
        if entry.get("why") == "rollback":
            while stack and stack[-1] != target:
                stack.pop()
        if not stack or stack[-1] != target:
            stack.append(target)
    return stack


def versions(settings: Settings) -> list[str]:
    """Published version ids, oldest build first."""
    folder = settings.serving / "versions"
    if not folder.is_dir():
        return []
    done = [
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and (p / "serving_info.json").is_file()
    ]  # serving_info.json is written last: a folder without it is an unfinished build
    return [p.name for p in sorted(done, key=lambda p: (p.stat().st_mtime, p.name))]


def _prune(settings: Settings) -> None:
    """Keep the live version, the last few that were live (rollback) and the newest built."""
    keep = keep_versions()
    recent_live: list[str] = []
    for entry in reversed(_history(settings)):
        if entry["serving_id"] not in recent_live:
            recent_live.append(entry["serving_id"])
    built = versions(settings)
    kept = set(recent_live[:keep]) | set(built[-keep:])
    for name in built:
        if name not in kept:
            shutil.rmtree(settings.serving / "versions" / name)
            log.info("publish: pruned serving version %s", name)


def build_catalog(settings: Settings) -> Path:
    """Rebuild ``serving/serving.duckdb``: views over the live version, runs and metrics."""
    serving = settings.serving
    now = live(settings)
    if now is None:
        return serving / SERVING_DB
    kept = versions(settings)
    base = serving.resolve()
    all_parquet = [p for v in kept for p in recs_files(base / "versions" / v)]
    tmp = serving / f".{SERVING_DB}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    with db.connect(settings.warehouse, read_only=True) as wh:
        runs = db.frame(wh, "select * from runs order by as_of, run_id")
        metrics = db.frame(wh, "select * from run_metrics order by run_id, step, metric")
        quality = db.frame(wh, "select * from eval_metrics order by as_of, run_id")
        gates = db.frame(wh, "select * from gate_decisions order by decided_at")
    info = pl.DataFrame([version_info(settings, v) for v in kept]).select(
        "run_id",
        pl.col("as_of").str.to_date(),
        "model_version",
        "serving_id",
        "rows",
        "users",
        (pl.col("serving_id") == now["serving_id"]).alias("live"),
    )
    with db.connect(tmp, read_only=False, schema=False) as con:
        for name, frame in (
            ("runs", runs),
            ("run_metrics", metrics),
            ("eval_metrics", quality),
            ("gate_decisions", gates),
            ("serving_versions", info),
        ):
            con.register("frame", frame)
            con.execute(f"create table {name} as select * from frame")  # fixed names
            con.unregister("frame")
        con.execute(
            db.sql("serving_catalog").format(
                live_parquet=db.path_literal(recs_files(base / "versions" / now["serving_id"])),
                live_items=db.path_literal(base / now["items_parquet"]),
                all_parquet=db.path_literal(all_parquet),
                live_similar=_similar_source(base, now),
            )
        )
    share_serving(settings, tmp)
    os.replace(tmp, serving / SERVING_DB)
    return serving / SERVING_DB


def _similar_source(base: Path, pointer: dict) -> str:
    """The live version's similar items for the catalog view, or no rows (older versions)."""
    path = base / pointer.get("similar_items_parquet", "-")
    if pointer.get("similar_items_parquet") and path.is_file():
        return f"read_parquet({db.path_literal(path)})"
    return (
        "(select null::varchar as item_id, null::integer as rank, null::varchar as "
        "similar_item_id, null::float as score, null::varchar as model_version, "
        "null::varchar as run_id where false)"
    )


def record_run(
    settings: Settings,
    run_id: str,
    as_of: dt.date,
    model_version: str,
    serving_id: str,
    stats: list[dict],
    rows: int,
    publish_seconds: float,
    served: bool = True,
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
                "served": served,
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
        # the business rules that applied and the (user, item) pairs each removed; none: no rows
        applied: dict[str, int] = {}
        for s in stats:
            for metric, n in (s.get("rules") or {}).items():
                applied[metric] = applied.get(metric, 0) + n
        db.record_metrics(con, run_id, "rules", applied)
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


def rollback(settings: Settings, version: str | None = None) -> str:
    """Serve ``version``, or the version that was live before the current one.

    An explicit operator action: it ignores the forward-only rule, and the next run
    for a date not older than the rolled-back-to version takes over again.
    """
    with file_lock(settings.serving / ".publish.lock", what="the serving pointer"):
        now = live(settings)
        if now is None:
            raise ContractError(f"nothing published under {settings.serving}")
        kept = versions(settings)
        step_back = version is None
        if version is None:
            earlier = [v for v in _live_stack(settings)[:-1] if v in kept]
            if not earlier:
                raise ContractError(
                    f"no serving version older than {now['serving_id']} to roll back to"
                )
            version = earlier[-1]
        safe_id(version, "serving version")
        if version not in kept:
            raise ContractError(
                f"serving version {version!r} does not exist; kept: {', '.join(kept)}"
            )
        chosen = version_info(settings, version)
        run_id, as_of, model = chosen["run_id"], chosen["as_of"], chosen["model_version"]
        why = "rollback" if step_back else f"rollback to {version}"
        _go_live(settings, version, run_id, as_of, model, why)
        build_catalog(settings)
    log.info(
        "rollback: serving %s -> %s (run %s, as_of %s)", now["serving_id"], version, run_id, as_of
    )
    return version
