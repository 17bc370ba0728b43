"""Scoring and publishing on a small synthetic shop: the published table's contract."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from conftest import AS_OF, write_csv

from nightrec import publish, registry, score
from nightrec.config import (
    ContractError,
    ScoreConfig,
    Settings,
    TrainConfig,
    cuda_in_onnxruntime,
)
from nightrec.pipeline import run_all
from nightrec.snapshot import cutoff_of
from nightrec.synth import SynthConfig, generate

TOP_N = 10
EXTRA_COLD = [f"cold_extra_{n}" for n in range(4)]
FUTURE_USER = "signs_up_after_as_of"
HEAVY_USER = "heavy_user"
HEAVY_UNSEEN = 5  # active items the heavy user has not seen: a list shorter than TOP_N


def read_table(path: Path, sql: str = "select * from recommendations") -> pl.DataFrame:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return pl.from_arrow(con.sql(sql).to_arrow_table())
    finally:
        con.close()


def current_db(settings: Settings) -> Path:
    return settings.serving / "current" / publish.SERVING_DB


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny model: one intra-op thread is fastest, and does not spin-wait on a busy host."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run1(tmp_path_factory) -> dict:
    """One full pipeline run over 300 synthetic users and 60 items, plus planted extras."""
    root = tmp_path_factory.mktemp("scoring")
    settings = Settings.from_env(home=root / "home", models_dir=root / "models")
    landing = settings.landing
    generate(SynthConfig(users=300, items=60, seed=11), landing)
    items = pl.read_csv(landing / "items" / "items-00000.csv", infer_schema=False)
    events = pl.read_csv(landing / "events" / "*.csv", infer_schema=False)

    # deactivate the two most popular items, so "inactive" matters for the popular list too
    popular = (
        events.group_by("item_id")
        .agg(pl.col("user_id").n_unique().alias("n"))
        .sort(["n", "item_id"], descending=[True, False])["item_id"]
        .head(2)
        .to_list()
    )
    items.filter(pl.col("item_id").is_in(popular)).with_columns(
        active=pl.lit("false"), updated_at=pl.lit("2026-10-20T00:00:00Z")
    ).write_csv(landing / "items" / "items-zz-deactivate.csv")
    active = sorted(
        items.filter((pl.col("active") == "true") & ~pl.col("item_id").is_in(popular))["item_id"]
    )
    # signed-up users without events (cold), and one who signs up after the run date
    write_csv(
        landing / "users" / "users-zz-extra.csv",
        "user_id,created_at",
        [f"{u},2026-10-15T00:00:00Z" for u in EXTRA_COLD] + [f"{FUTURE_USER},2026-11-05T00:00:00Z"],
    )
    # a user who has seen every item but five active ones
    start = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    seen = [i for i in sorted(items["item_id"]) if i not in active[-HEAVY_UNSEEN:]]
    write_csv(
        landing / "events" / "events-zz-heavy.csv",
        "user_id,item_id,event_type,ts",
        [
            f"{HEAVY_USER},{i},view,{start + dt.timedelta(minutes=n):%Y-%m-%dT%H:%M:%SZ}"
            for n, i in enumerate(seen)
        ],
    )

    out = run_all(
        settings,
        AS_OF,
        run_id="run1",
        train_cfg=TrainConfig(dim=16, epochs=2, seed=1),
        score_cfg=ScoreConfig(top_n=TOP_N, provider="cpu"),
    )
    assert out["ingest"]["result"]["rejected"] == 0
    serving_id = out["publish"]["result"]["serving_id"]
    path = settings.serving / "versions" / serving_id / publish.SERVING_DB
    con = duckdb.connect(str(settings.warehouse), read_only=True)
    try:
        ev = pl.from_arrow(
            con.sql(
                "select user_id, item_id, ts from events where ts < $cutoff",
                params={"cutoff": cutoff_of(AS_OF)},
            ).to_arrow_table()
        )
        catalog = pl.from_arrow(con.sql("select item_id, active from items").to_arrow_table())
        runs = con.execute(
            "select run_id, model_version, serving_id, provider from runs"
        ).fetchall()
    finally:
        con.close()
    return {
        "settings": settings,
        "snapshot": out["snapshot"]["result"],
        "out": out,
        "serving_id": serving_id,
        "path": path,
        "recs": read_table(path),
        "events": ev,
        "seen": ev.select("user_id", "item_id").unique(),
        "active": set(catalog.filter("active")["item_id"]),
        "inactive": set(catalog.filter(~pl.col("active"))["item_id"]),
        "deactivated": popular,
        "runs": runs,
    }


def isolated(run1: dict, tmp_path: Path) -> Settings:
    """A fresh home (warehouse, scores, serving) on run1's model registry and snapshot."""
    return dataclasses.replace(run1["settings"], home=tmp_path / "home")


def expected_counts(run1: dict, users: list[str], top_n: int) -> dict[str, int]:
    seen_active = (
        run1["seen"].filter(pl.col("item_id").is_in(list(run1["active"]))).group_by("user_id").len()
    )
    n_seen = dict(zip(seen_active["user_id"], seen_active["len"], strict=True))
    return {u: min(top_n, len(run1["active"]) - n_seen.get(u, 0)) for u in users}


def snapshot_users(run1: dict) -> list[str]:
    return pl.read_parquet(run1["snapshot"] / "users.parquet")["user_id"].to_list()


def test_never_a_seen_item_nor_a_duplicate_and_ranks_run_1_to_n(run1) -> None:
    recs = run1["recs"]
    assert recs.height > 0
    again = recs.join(run1["seen"], on=["user_id", "item_id"], how="inner")
    assert again.height == 0, again.head()
    assert recs.group_by("user_id", "item_id").len().filter(pl.col("len") > 1).height == 0
    ranks = recs.group_by("user_id").agg(pl.col("rank").sort())
    for user, got in ranks.iter_rows():
        assert got == list(range(1, len(got) + 1)), user
    # better first: scores never rise with rank
    drops = recs.sort("user_id", "rank").with_columns(
        up=pl.col("score").diff().over("user_id") > 1e-6
    )
    assert not drops["up"].any()
    assert set(recs["run_id"]) == {"run1"}
    assert set(recs["model_version"]) == {run1["out"]["train"]["result"]}
    assert set(recs["generated_at"]) == {dt.datetime(2026, 11, 1, tzinfo=dt.UTC)}


def test_exactly_top_n_per_user_where_the_catalog_allows(run1) -> None:
    users = snapshot_users(run1)
    want = expected_counts(run1, users, TOP_N)
    got = dict(run1["recs"].group_by("user_id").len().iter_rows())
    assert got == want
    assert got[HEAVY_USER] == HEAVY_UNSEEN  # the short list is exercised
    assert sum(n == TOP_N for n in got.values()) > 0.9 * len(users)


def test_top_n_larger_than_the_catalog(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    top_n = 100
    assert top_n > len(run1["active"]) + len(run1["inactive"])
    score.score(settings, run1["snapshot"], "big", ScoreConfig(top_n=top_n, provider="cpu"))
    publish.publish(settings, "big", AS_OF)
    recs = read_table(current_db(settings))
    got = dict(recs.group_by("user_id").len().iter_rows())
    users = snapshot_users(run1)
    want = expected_counts(run1, users, top_n)
    assert max(want.values()) < top_n  # every list is cut by the catalog, not by top_n
    assert got == want
    for user in EXTRA_COLD:  # nothing seen: every active item
        assert got[user] == len(run1["active"])
    assert not set(recs["item_id"]) & run1["inactive"]
    assert recs.join(run1["seen"], on=["user_id", "item_id"], how="inner").height == 0


def test_inactive_items_are_never_recommended(run1) -> None:
    inactive = run1["inactive"]
    assert set(run1["deactivated"]) <= inactive
    assert not set(run1["recs"]["item_id"]) & inactive
    # the deactivated items were the most popular: without the check they would show up
    assert run1["events"].filter(pl.col("item_id").is_in(run1["deactivated"])).height > 0


def test_cold_users_get_popular_items_in_popularity_order(run1) -> None:
    recs, events = run1["recs"], run1["events"]
    cold = sorted(set(snapshot_users(run1)) - set(events["user_id"]))
    assert set(EXTRA_COLD) <= set(cold) and len(cold) > len(EXTRA_COLD)  # synth's own too

    since = events["ts"].max() - dt.timedelta(days=30)
    recent = (
        events.filter(pl.col("ts") >= since)
        .group_by("item_id")
        .agg(pl.col("user_id").n_unique().alias("users"))
    )
    ranking = (
        pl.DataFrame({"item_id": sorted(run1["active"])})
        .join(recent, on="item_id", how="left")
        .fill_null(0)
        .sort(["users", "item_id"], descending=[True, False])
        .head(TOP_N)
    )
    assert ranking["users"].n_unique() > 1
    all_time = (
        events.group_by("item_id")
        .agg(pl.col("user_id").n_unique().alias("users"))
        .filter(pl.col("item_id").is_in(list(run1["active"])))
        .sort(["users", "item_id"], descending=[True, False])
        .head(TOP_N)
    )
    window_matters = all_time["item_id"].to_list() != ranking["item_id"].to_list()

    for user in cold:
        mine = recs.filter(pl.col("user_id") == user).sort("rank")
        assert mine["item_id"].to_list() == ranking["item_id"].to_list(), user
        assert mine["rank"].to_list() == list(range(1, TOP_N + 1))
        assert set(mine["reason"]) == {"popular"}
        assert mine["because_item_id"].null_count() == TOP_N
        assert np.allclose(mine["score"].to_numpy(), ranking["users"].to_numpy())
    # users with history are scored by the model, with a reason
    warm = recs.filter(~pl.col("user_id").is_in(cold))
    assert set(warm["reason"]) == {"history"} and warm["because_item_id"].null_count() == 0
    assert window_matters  # this data tells a 30-day window from all time


def test_every_snapshot_user_is_published(run1) -> None:
    users = set(snapshot_users(run1))
    published = set(run1["recs"]["user_id"])
    assert users == published
    assert {HEAVY_USER, *EXTRA_COLD} <= published
    assert FUTURE_USER not in users | published
    info = read_table(run1["path"], "select * from serving_info")
    assert info["users"].to_list() == [len(users)] and info["rows"].to_list() == [
        run1["recs"].height
    ]


def test_republishing_a_run_keeps_its_serving_version(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    score.score(settings, run1["snapshot"], "runA", ScoreConfig(top_n=TOP_N, provider="cpu"))
    first = publish.publish(settings, "runA", AS_OF)
    built = settings.serving / "versions" / first["serving_id"] / publish.SERVING_DB
    stamp = built.stat().st_mtime_ns
    second = publish.publish(settings, "runA", AS_OF)
    assert second["serving_id"] == first["serving_id"]
    assert (second["rows"], second["users"]) == (first["rows"], first["users"])
    assert (settings.serving / "current").resolve().name == first["serving_id"]
    assert built.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in (settings.serving / "versions").iterdir()] == [first["serving_id"]]
    runs = read_table(settings.warehouse, "select run_id, serving_id from runs")
    assert runs.rows() == [("runA", first["serving_id"])]
    # same scores as run1's: the published rows do not depend on where they were published
    a = read_table(current_db(settings)).drop("run_id").sort("user_id", "rank")
    assert a.equals(run1["recs"].drop("run_id").sort("user_id", "rank"))


def _listing(settings: Settings, run_id: str) -> tuple[Path, dict]:
    done = next(settings.scores_dir(run_id).glob("shard-*/_SUCCESS.json"))
    return done, json.loads(done.read_text())


def test_publish_takes_the_scored_parts_as_they_are(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    score.score(settings, run1["snapshot"], "runL", ScoreConfig(top_n=TOP_N, provider="cpu"))
    done, stats = _listing(settings, "runL")
    model = stats["model_version"]
    assert stats["run_columns"] == {
        "model_version": model,
        "run_id": "runL",
        "generated_at": f"{AS_OF.isoformat()}T00:00:00+00:00",
    }
    out = publish.publish(settings, "runL", AS_OF)
    version = settings.serving / "versions" / out["serving_id"]
    scored = [done.parent / p["name"] for p in stats["parts"]]
    served = publish.recs_files(version)
    # every score part is in the version as the same file (a hard link): no row rewritten
    assert [p.name for p in served] == [f"part-00000-{p.name[5:]}" for p in scored]
    assert [os.stat(p).st_ino for p in served] == [os.stat(p).st_ino for p in scored]
    recs = read_table(current_db(settings)).sort("user_id", "rank")
    assert recs.height == out["rows"] == sum(p["rows"] for p in stats["parts"])
    assert set(recs["model_version"]) == {model} and set(recs["run_id"]) == {"runL"}
    assert set(recs["generated_at"]) == {dt.datetime.combine(AS_OF, dt.time(), dt.UTC)}
    assert recs.drop("run_id").equals(run1["recs"].drop("run_id").sort("user_id", "rank"))
    pointer = json.loads((settings.serving / "current.json").read_text())
    glob = settings.serving / pointer["recommendations_parquet"]
    assert pl.scan_parquet(glob).select(pl.len()).collect().item() == recs.height

    # published for another date than the one scored: the run's columns differ, so the
    # rows are rewritten once with that date (a file of the version's own)
    other = AS_OF - dt.timedelta(days=1)
    back = publish.publish(settings, "runL", other)
    assert back["served"] is False and back["serving_id"] != out["serving_id"]
    (part,) = publish.recs_files(settings.serving / "versions" / back["serving_id"])
    assert os.stat(part).st_nlink == 1
    rewritten = pl.read_parquet(part).sort("user_id", "rank")
    assert set(rewritten["generated_at"]) == {dt.datetime.combine(other, dt.time(), dt.UTC)}
    assert rewritten.drop("generated_at").equals(recs.drop("generated_at"))


def test_publish_rewrites_parts_scored_without_the_run_columns(run1, tmp_path: Path) -> None:
    """Scores from before parts carried the run's columns still publish (one DuckDB pass),
    and a version of the older layout (one recommendations.parquet) is still served."""
    settings = isolated(run1, tmp_path)
    score.score(settings, run1["snapshot"], "runO", ScoreConfig(top_n=TOP_N, provider="cpu"))
    done, stats = _listing(settings, "runO")
    for listed in stats["parts"]:  # as an older nightrec wrote them
        path = done.parent / listed["name"]
        pl.read_parquet(path).select(list(score.SCHEMA)).write_parquet(path)
        listed |= {"bytes": path.stat().st_size, "sha256": registry.sha256(path)}
    del stats["run_columns"]
    done.write_text(json.dumps(stats))
    out = publish.publish(settings, "runO", AS_OF)
    version = settings.serving / "versions" / out["serving_id"]
    (part,) = publish.recs_files(version)
    recs = read_table(current_db(settings)).sort("user_id", "rank")
    assert recs.height == out["rows"] and set(recs["run_id"]) == {"runO"}
    assert recs.drop("run_id").equals(run1["recs"].drop("run_id").sort("user_id", "rank"))

    # the layout before parts: one file; the catalog and the pointer still read it
    part.rename(version / publish.RECS_PARQUET)
    (version / publish.RECS_DIR).rmdir()
    assert publish.recs_files(version) == [version / publish.RECS_PARQUET]
    publish.rollback(settings, out["serving_id"])
    pointer = json.loads((settings.serving / "current.json").read_text())
    assert pointer["recommendations_parquet"].endswith(publish.RECS_PARQUET)
    assert read_table(settings.serving / publish.SERVING_DB).height == recs.height


def test_new_run_new_version_rollback_and_open_reader(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    cfg = ScoreConfig(top_n=TOP_N, provider="cpu")
    score.score(settings, run1["snapshot"], "runA", cfg)
    a = publish.publish(settings, "runA", AS_OF)
    reader = duckdb.connect(str(current_db(settings)), read_only=True)
    try:
        score.score(settings, run1["snapshot"], "runB", cfg)
        b = publish.publish(settings, "runB", AS_OF)
        assert b["serving_id"] != a["serving_id"]
        assert (settings.serving / "current").resolve().name == b["serving_id"]
        # the reader opened before the swap still reads the old version, whole
        assert reader.execute("select distinct run_id from recommendations").fetchall() == [
            ("runA",)
        ]
        assert reader.execute("select count(*) from recommendations").fetchone()[0] == a["rows"]
        assert set(read_table(current_db(settings))["run_id"]) == {"runB"}

        score.score(settings, run1["snapshot"], "runC", cfg)
        c = publish.publish(settings, "runC", AS_OF)
        assert len({a["serving_id"], b["serving_id"], c["serving_id"]}) == 3

        # rollback steps back one version at a time, to the oldest and no further
        assert publish.rollback(settings) == b["serving_id"]
        assert (settings.serving / "current").resolve().name == b["serving_id"]
        assert set(read_table(current_db(settings))["run_id"]) == {"runB"}
        assert publish.rollback(settings) == a["serving_id"]
        assert set(read_table(current_db(settings))["run_id"]) == {"runA"}
        with pytest.raises(ContractError, match="no serving version older"):
            publish.rollback(settings)
        assert (settings.serving / "current").resolve().name == a["serving_id"]
        assert reader.execute("select count(*) from recommendations").fetchone()[0] == a["rows"]
    finally:
        reader.close()


def test_cpu_provider_is_used_and_recorded(run1, tmp_path: Path, caplog) -> None:
    assert score.choose_providers("cpu") == ["CPUExecutionProvider"]
    assert run1["out"]["score"]["result"]["provider"] == "CPUExecutionProvider"
    assert [r[3] for r in run1["runs"]] == ["CPUExecutionProvider"]
    settings = isolated(run1, tmp_path)
    with caplog.at_level(logging.INFO, logger="nightrec.score"):
        stats = score.score(settings, run1["snapshot"], "cpu", ScoreConfig(provider="cpu"))
    assert stats["provider"] == "CPUExecutionProvider"
    assert any("on CPUExecutionProvider" in r.getMessage() for r in caplog.records)
    if not cuda_in_onnxruntime():  # CUDA asked for where it cannot run: said, not ignored
        with pytest.raises(ContractError, match="provider 'cuda' asked for, but ONNX Runtime"):
            score.choose_providers("cuda")
        assert score.choose_providers("auto") == ["CPUExecutionProvider"]


def test_the_top_n_kernel_and_the_fused_graph_write_the_same_rows(
    run1, tmp_path: Path, monkeypatch
) -> None:
    """The score step on the CPU with nightrec's top-N kernel (the default) and with the
    whole fused graph: the same parts row for row, and ``_SUCCESS.json`` says which ran.
    With more workers than a batch has parts of ``model_batch`` users, the batches grow
    to give each worker one: the same rows again."""
    from nightrec import workers

    rows = {}
    for name, mode, cpus in (
        ("kernel", "kernel", None),
        ("graph", "graph", None),
        ("k8", "kernel", 8),
    ):
        if cpus:
            monkeypatch.setattr(workers, "cpus", lambda cpus=cpus: cpus)
        settings = isolated(run1, tmp_path / name)
        cfg = ScoreConfig(top_n=TOP_N, provider="cpu", topk=mode, model_batch=16, batch_size=32)
        stats = score.score(settings, run1["snapshot"], f"topk-{name}", cfg)
        assert stats["topk"] == mode
        assert stats["topk_workers"] == (workers.cpus() if mode == "kernel" else None)
        folder = score.shard_dir(settings, f"topk-{name}", 0, 1)
        assert json.loads((folder / "_SUCCESS.json").read_text())["topk"] == mode
        parts = sorted(p for p in folder.glob("*.parquet") if p.name != score.SIMILAR_FILE)
        rows[name] = pl.concat([pl.read_parquet(p) for p in parts]).drop(
            "run_id", "generated_at", strict=False
        )
        assert rows[name].height == stats["rows"] > 0
    assert rows["kernel"].equals(rows["graph"])
    assert rows["k8"].equals(rows["graph"])


def test_three_shards_publish_the_same_table_as_one(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    stats = []
    for shard in range(3):
        cfg = ScoreConfig(top_n=TOP_N, provider="cpu", num_shards=3, shard=shard)
        stats.append(score.score(settings, run1["snapshot"], "sharded", cfg))
        if shard == 1:  # not every shard done: nothing to publish yet
            with pytest.raises(ContractError):
                publish.publish(settings, "sharded", AS_OF)
    assert all(s["users"] > 0 for s in stats)
    assert sum(s["users"] for s in stats) == len(snapshot_users(run1))
    publish.publish(settings, "sharded", AS_OF)

    key = ["user_id", "rank", "item_id", "reason", "because_item_id", "model_version"]
    sharded = read_table(current_db(settings)).sort("user_id", "rank")
    whole = run1["recs"].sort("user_id", "rank")
    assert sharded.height == whole.height
    assert sharded.select(key).equals(whole.select(key))
    assert np.allclose(sharded["score"].to_numpy(), whole["score"].to_numpy(), atol=1e-5)


def test_parts_are_listed_with_their_checksums_and_a_changed_part_stops_publish(
    run1, tmp_path: Path
) -> None:
    settings = isolated(run1, tmp_path)
    stats = score.score(
        settings, run1["snapshot"], "runP", ScoreConfig(top_n=TOP_N, provider="cpu")
    )
    folder = score.shard_dir(settings, "runP", 0, 1)
    listed = {p["name"]: p for p in stats["parts"]}
    assert sorted(listed) == sorted(f.name for f in folder.glob("part-*.parquet"))
    for name, part in listed.items():  # taken from the bytes written, so equal to the file's
        assert part["sha256"] == registry.sha256(folder / name)
        assert part["rows"] == pl.read_parquet(folder / name).height
    assert sum(p["rows"] for p in stats["parts"]) == stats["rows"]
    # a part rewritten after scoring (one row fewer): publish refuses, nothing is built
    victim = folder / sorted(listed)[0]
    pl.read_parquet(victim).head(-1).write_parquet(victim)
    with pytest.raises(ContractError, match="changed since it was scored"):
        publish.publish(settings, "runP", AS_OF)
    assert publish.versions(settings) == []
    # a part that scoring did not write is refused too
    score.score(settings, run1["snapshot"], "runP", ScoreConfig(top_n=TOP_N, provider="cpu"))
    pl.read_parquet(victim).write_parquet(folder / "part-99999.parquet")
    with pytest.raises(ContractError, match="not the ones scoring listed"):
        publish.publish(settings, "runP", AS_OF)


def test_an_unfinished_version_folder_is_rebuilt_not_served(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    score.score(settings, run1["snapshot"], "runU", ScoreConfig(top_n=TOP_N, provider="cpu"))
    first = publish.publish(settings, "runU", AS_OF)
    final = settings.serving / "versions" / first["serving_id"]
    (final / "serving_info.json").unlink()  # as if the build stopped after its rename
    assert publish.versions(settings) == []
    again = publish.publish(settings, "runU", AS_OF)
    assert again["serving_id"] == first["serving_id"]
    assert publish.versions(settings) == [first["serving_id"]]
    recs = read_table(final / publish.SERVING_DB)
    assert recs.height == again["rows"] == first["rows"]
    assert (
        read_table(final / publish.SERVING_DB, "select rows from serving_info").item()
        == recs.height
    )


def test_a_list_with_a_repeated_item_is_never_written() -> None:
    top = np.array([[3, 5, 7], [4, 4, 9]])
    keep = np.array([[True, True, True], [True, True, False]])
    with pytest.raises(ContractError, match="repeats an item"):
        score._check_lists(top, keep, "u1", 0)
    keep[1, 1] = False  # the repeat is not published (a short list): fine
    score._check_lists(top, keep, "u1", 0)
    frame = pl.DataFrame(
        {"user_id": ["a", "a", "b"], "rank": [1, 3, 1], "item_id": ["x", "y", "x"]}
    )
    with pytest.raises(ContractError, match="rank gaps"):
        score._check_frame(frame)


@pytest.mark.parametrize("overlap", ["on", "off"])
def test_overlapped_batches_write_the_same_rows_in_order_and_stop_on_a_writer_error(
    run1, tmp_path: Path, monkeypatch, overlap: str
) -> None:
    """Reading, scoring and writing overlap (score.OVERLAP batches each side; the default on
    a GPU) or run in order (the default on the CPU): many small batches, several parts,
    give the rows one batch gives, in the same order; an error while writing stops the
    shard and leaves no finished folder behind."""
    settings = isolated(run1, tmp_path)
    whole = score.score(settings, run1["snapshot"], "one", ScoreConfig(top_n=TOP_N, provider="cpu"))
    assert whole["overlapped"] is False  # auto, on the CPU
    small = ScoreConfig(top_n=TOP_N, provider="cpu", batch_size=7, model_batch=3, overlap=overlap)
    many = score.score(settings, run1["snapshot"], "many", small)
    assert len(many["parts"]) > len(whole["parts"]) > 0  # 16 batches per part: several parts

    def rows(run_id: str) -> pl.DataFrame:
        folder = score.shard_dir(settings, run_id, 0, 1)
        frame = pl.concat(pl.read_parquet(p) for p in sorted(folder.glob("part-*.parquet")))
        return frame.drop(score.RUN_COLUMNS, strict=False)

    a, b = rows("one"), rows("many")
    cols = ["user_id", "rank", "item_id", "reason", "because_item_id"]
    assert a.select(cols).equals(b.select(cols))  # same rows, same order: users sorted
    assert np.allclose(a["score"].to_numpy(), b["score"].to_numpy(), atol=1e-5)
    assert many["users_written"] == whole["users_written"]
    assert {"read_wait_seconds", "write_wait_seconds"} <= set(many)
    assert many["overlapped"] is (overlap == "on")
    with pytest.raises(ContractError, match="overlap must be auto, on or off"):
        ScoreConfig(overlap="yes")

    calls = []
    check = score._check_lists

    def fails_on_the_fifth(top_i, keep, first_user, shard):  # a repeated item, batch 5
        calls.append(first_user)
        if len(calls) == 5:
            raise ContractError(f"score shard {shard}: a list repeats an item (planted)")
        check(top_i, keep, first_user, shard)

    monkeypatch.setattr(score, "_check_lists", fails_on_the_fifth)
    with pytest.raises(ContractError, match="planted"):
        score.score(settings, run1["snapshot"], "broken", small)
    assert not score.shard_dir(settings, "broken", 0, 1).exists()
    assert len(calls) <= 5 + 2 * score.OVERLAP  # it stopped, it did not score the rest


def test_publish_runs_without_importing_torch(run1, tmp_path: Path) -> None:
    """Publish links parts and writes small tables: importing torch (2 s here) would be
    most of its time at 10M rows. It shares the run columns with score, from publish."""
    settings = isolated(run1, tmp_path)
    score.score(settings, run1["snapshot"], "light", ScoreConfig(top_n=TOP_N, provider="cpu"))
    code = (
        "import sys, datetime as dt\n"
        "from pathlib import Path as P\n"
        "from nightrec import publish\n"
        "from nightrec.config import Settings\n"
        "s = Settings.from_env(home=P(sys.argv[1]), models_dir=P(sys.argv[2]))\n"
        "publish.publish(s, 'light', dt.date.fromisoformat(sys.argv[3]))\n"
        "print(sorted({'torch', 'onnxruntime'} & set(sys.modules)))\n"
    )
    args = [str(settings.home), str(settings.models_dir), AS_OF.isoformat()]
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert publish.versions(settings)  # it did publish
