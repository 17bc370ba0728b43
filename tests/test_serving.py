"""Serving semantics under backfills, old and future dates, rollback, readers and locks.

Real Airflow runs (``dag.test()``), real DuckDB files, real scoring; tiny synthetic data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from nightrec.config import Settings
from tests.conftest import REPO

DAY1, DAY2, DAY3 = dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)
PY = sys.executable


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.initdb()


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Settings:
    from nightrec.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("serving")
    settings = Settings.from_env(home=root / "home", models_dir=root / "models")
    generate(SynthConfig(users=80, items=30, seed=11), settings.landing)
    return settings


@pytest.fixture
def env(home, monkeypatch) -> Settings:
    monkeypatch.setenv("NIGHTREC_HOME", str(home.home))
    monkeypatch.setenv("NIGHTREC_MODELS_DIR", str(home.models_dir))
    return home


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).get_dag(dag_id)


def _live(settings: Settings) -> dict:
    return json.loads((settings.serving / "current.json").read_text())


def _model(settings: Settings) -> str:
    return (settings.models_dir / "current").resolve().name


def _cli(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NIGHTREC_HOME": str(settings.home),
        "NIGHTREC_MODELS_DIR": str(settings.models_dir),
    }
    out = subprocess.run(
        [PY, "-m", "nightrec.cli", "-q", *args], capture_output=True, text=True, env=env
    )
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def _ok(run) -> bool:
    return "success" in str(run.state).lower()


def _catalog(settings: Settings, query: str, params=None):
    with duckdb.connect(str(settings.serving / "serving.duckdb"), read_only=True) as con:
        return con.execute(query, params or []).fetchall()


def test_backfill_and_old_runs_never_replace_what_is_live(airflow_db, env):
    settings = env
    dag = _dag("nightly_recommendations")
    newest = dag.test(run_conf={"as_of": DAY3.isoformat(), "top_n": 5, "provider": "cpu"})
    assert _ok(newest)
    live, model = _live(settings), _model(settings)
    assert live["as_of"] == DAY3.isoformat() and live["run_id"] == newest.run_id
    assert model.startswith("v20261103")

    # a backfill of an older date: succeeds, publishes its own version, serves nothing new
    old = dag.test(run_conf={"as_of": DAY1.isoformat(), "top_n": 5, "provider": "cpu"})
    assert _ok(old)
    assert _live(settings) == live and _model(settings) == model
    assert (settings.models_dir / "current").resolve().name == model
    assert any(p.name.startswith("v20261101") for p in settings.models_dir.iterdir())
    served = dict(_catalog(settings, "select run_id, served from runs"))
    assert served == {newest.run_id: True, old.run_id: False}
    # the old run's version is queryable by run id; apps' table still shows the newest run
    n_old = _catalog(
        settings, "select count(*) from recommendations_all where run_id = ?", [old.run_id]
    )
    assert n_old[0][0] > 0
    assert _catalog(settings, "select distinct run_id from recommendations") == [(newest.run_id,)]
    assert _catalog(settings, "select run_id, as_of from serving_info") == [(newest.run_id, DAY3)]

    # clearing publish of the old run (re-running it) still does not take it live
    again = _cli(settings, "publish", "--as-of", DAY1.isoformat(), "--run-id", old.run_id)
    assert json.loads(again.stdout)["served"] is False
    assert _live(settings) == live

    # a future date is refused before anything runs, from the DAG and from the CLI
    future = dag.test(run_conf={"as_of": "2099-01-01", "provider": "cpu"})
    assert not _ok(future)
    states = {ti.task_id: str(ti.state) for ti in future.get_task_instances()}
    assert "failed" in states["plan"] and "success" not in states.get("publish", "")
    refused = _cli(settings, "run", "--as-of", "2099-01-01", check=False)
    assert refused.returncode == 2 and "after today" in refused.stderr
    assert _live(settings) == live and _model(settings) == model
    assert not list(settings.serving.glob("versions/2099*"))

    # the promote Param forces an older date live, model included
    forced = dag.test(
        run_conf={"as_of": DAY2.isoformat(), "top_n": 5, "provider": "cpu", "promote": True}
    )
    assert _ok(forced)
    assert _live(settings)["run_id"] == forced.run_id
    assert _model(settings).startswith("v20261102")

    # rollback from the Airflow UI: the rollback DAG with a chosen version
    rollback = _dag("rollback_recommendations")
    assert live["serving_id"] in rollback.params.get_param("version").schema["enum"]
    run = rollback.test(run_conf={"version": live["serving_id"]})
    assert _ok(run)
    assert _live(settings)["serving_id"] == live["serving_id"]
    assert _catalog(settings, "select distinct run_id from recommendations") == [(newest.run_id,)]
    # and `previous` steps back to what was live before
    assert _ok(rollback.test(run_conf={"version": "previous"}))
    assert _live(settings)["run_id"] == forced.run_id


def test_ingest_dag_skips_without_new_files_and_updates_its_asset(airflow_db, env, tmp_path):
    dag = _dag("ingest_events")
    first = dag.test()  # the landing files of the module were all ingested by earlier runs
    states = {ti.task_id: str(ti.state) for ti in first.get_task_instances()}
    assert "skipped" in states["ingest"]
    extra = env.landing / "events" / "late.csv"
    extra.write_text(
        "user_id,item_id,event_type,ts\nu00000001,i0000001,view,2026-11-02T10:00:00Z\n"
    )
    second = dag.test()
    states = {ti.task_id: str(ti.state) for ti in second.get_task_instances()}
    assert "success" in states["ingest"]
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "nightrec_events")
            .count()
        )
    assert events >= 1


HOLD_READER = textwrap.dedent(
    """
    import duckdb, sys, time
    con = duckdb.connect(sys.argv[1], read_only=True)
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    print(time.time(), flush=True)
    """
)


def test_an_outside_reader_on_the_warehouse_does_not_fail_the_run(airflow_db, env, monkeypatch):
    """A read-only session holds the warehouse while the DAG starts: ingest waits, then runs."""
    monkeypatch.setenv("NIGHTREC_LOCK_WAIT_S", "60")
    holder = subprocess.Popen(
        [PY, "-c", HOLD_READER, str(env.warehouse), "6"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "holding"
    started = time.time()
    run = _dag("nightly_recommendations").test(
        run_conf={"as_of": DAY3.isoformat(), "top_n": 5, "provider": "cpu", "retrain": False}
    )
    released = float(holder.stdout.readline())
    holder.wait()
    assert _ok(run)
    assert released > started  # the reader really held the lock while the run began


def test_lock_wait_is_bounded_and_names_the_holder(env, monkeypatch):
    from nightrec import db

    monkeypatch.setenv("NIGHTREC_LOCK_WAIT_S", "1")
    db.connect(env.warehouse).close()  # the warehouse exists when this test runs alone too
    holder = subprocess.Popen(
        [PY, "-c", HOLD_READER, str(env.warehouse), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(db.Busy, match=rf"locked by PID {holder.pid} .*duckdb"):
            db.connect(env.warehouse)
        out = _cli(env, "ingest", check=False)
        assert out.returncode == 2 and f"PID {holder.pid}" in out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_recs_never_opens_the_warehouse(env):
    """``recs`` reads the serving catalog: a writer holding the warehouse does not block it."""
    writer = subprocess.Popen(
        [
            PY,
            "-c",
            HOLD_READER.replace("read_only=True", "read_only=False"),
            str(env.warehouse),
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "holding"
        out = _cli(env, "recs", "--sample", "1", "--limit", "3")
        assert "title" in out.stdout and "u000000" in out.stdout
    finally:
        writer.kill()
        writer.wait()


def test_a_second_run_refuses_with_a_clear_message(env):
    hold = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from nightrec.locks import file_lock
        with file_lock(Path(sys.argv[1])):
            print("holding", flush=True)
            time.sleep(30)
        """
    )
    holder = subprocess.Popen(
        [PY, "-c", hold, str(env.home / ".run.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        out = _cli(env, "run", "--as-of", DAY3.isoformat(), "--no-retrain", check=False)
        assert out.returncode == 2
        assert f"pid {holder.pid}" in out.stderr and "Traceback" not in out.stderr
    finally:
        holder.kill()
        holder.wait()


READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import duckdb, polars as pl
    serving, seconds = Path(sys.argv[1]), float(sys.argv[2])
    reads = errors = 0
    last = ""
    end = time.time() + seconds
    while time.time() < end:
        for how in ("catalog", "duckdb_parquet", "polars_scan"):
            try:
                if how == "catalog":
                    with duckdb.connect(str(serving / "serving.duckdb"), read_only=True) as c:
                        n = c.execute("select count(*), count(distinct user_id) "
                                      "from recommendations").fetchone()
                else:
                    pointer = json.loads((serving / "current.json").read_text())
                    path = str(serving / pointer["recommendations_parquet"])  # resolved once
                    if how == "duckdb_parquet":
                        n = duckdb.execute("select count(*), count(distinct user_id) from "
                                           "read_parquet($p)", {"p": path}).fetchone()
                    else:
                        df = pl.scan_parquet(path).select(pl.len(), pl.col("user_id").n_unique())
                        n = tuple(df.collect().row(0))
                assert n[0] > 0 and n[1] > 0
                reads += 1
            except Exception as exc:
                errors += 1
                last = f"{how}: {exc}"
    print(json.dumps({"reads": reads, "errors": errors, "last": last}))
    """
)


def test_readers_never_see_a_half_published_version(env):
    """Readers in other processes (catalog, DuckDB read_parquet, Polars scan_parquet) read in
    a loop while publishes swap the live version back and forth: zero errors."""
    from nightrec import publish, score
    from nightrec.config import ScoreConfig

    snap = env.snapshot_dir(DAY3)
    for run_id, top_n in (("swapA", 3), ("swapB", 6)):
        score.score(env, snap, run_id, ScoreConfig(top_n=top_n, provider="cpu"))
    readers = [
        subprocess.Popen([PY, "-c", READER, str(env.serving), "12"], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    publishes = 0
    deadline = time.time() + 10
    while time.time() < deadline:
        for run_id in ("swapA", "swapB"):
            assert publish.publish(env, run_id, DAY3)["served"]
            publishes += 1
    results = [json.loads(r.communicate()[0]) for r in readers]
    assert publishes >= 4
    assert all(r["reads"] > 10 for r in results), results
    assert all(r["errors"] == 0 for r in results), results


def test_retention_keeps_what_rollback_needs(env, monkeypatch):
    from nightrec.retention import prune

    live_model = _model(env)
    monkeypatch.setenv("NIGHTREC_KEEP_SNAPSHOTS", "1")
    monkeypatch.setenv("NIGHTREC_KEEP_SCORES", "1")
    monkeypatch.setenv("NIGHTREC_KEEP_MODELS", "1")
    removed = prune(env)
    assert removed["scores"] >= 1 and removed["snapshots"] >= 1
    assert [p.name for p in (env.home / "snapshots").iterdir() if not p.name.startswith(".")] == [
        DAY3.isoformat()
    ]
    assert _model(env) == live_model and (env.models_dir / live_model).is_dir()
    # every model a kept serving version was scored with survives
    for info in env.serving.glob("versions/*/serving_info.json"):
        assert (env.models_dir / json.loads(info.read_text())["model_version"]).is_dir()
    # the live version still reads, and a rollback still has a target
    assert _catalog(env, "select count(*) from recommendations")[0][0] > 0
    assert _cli(env, "rollback").returncode == 0


def test_versions_and_pointer_paths_are_stable(env):
    pointer = _live(env)
    pattern = env.serving / pointer["recommendations_parquet"]
    parts = sorted(pattern.parent.glob(pattern.name))
    assert parts and all(p.is_file() for p in parts)
    assert pattern.parent == env.serving / pointer["recommendations_dir"]
    assert pointer["serving_id"] in str(pattern)
    listed = json.loads(_cli(env, "versions").stdout)
    assert sum(v["live"] for v in listed) == 1
    assert [v["serving_id"] for v in listed if v["live"]] == [pointer["serving_id"]]
    assert Path(env.serving / "current").resolve().name == pointer["serving_id"]
