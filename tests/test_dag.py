"""DAG integrity and one real end-to-end ``dag.test()`` run on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest
from airflow.exceptions import ParamValidationError

from nightrec import registry
from tests.conftest import AS_OF, REPO

DAG_ID = "nightly_recommendations"
HEAVY = ("torch", "polars", "duckdb", "transformers", "onnxruntime", "numpy")


@pytest.fixture(scope="session")
def airflow_db():
    from airflow.utils import db

    db.initdb()


@pytest.fixture
def dagbag(airflow_db):
    """A fresh parse per test: ``dag.test(run_conf=...)`` updates the DAG object's params."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


DAG_IDS = {DAG_ID, "ingest_events", "rollback_recommendations"}


def test_dag_folder_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_IDS <= set(dagbag.dag_ids)
    for dag_id in DAG_IDS:
        dag = dagbag.get_dag(dag_id)
        assert dag.doc_md and "nightrec" in dag.tags, dag_id
        assert all(t.owner == "nightrec" for t in dag.tasks), dag_id
        assert all(t.on_failure_callback for t in dag.tasks), dag_id


def test_tasks_edges_retries_and_pools(dagbag):
    dag = dagbag.get_dag(DAG_ID)
    assert set(dag.task_ids) == {
        "plan", "shards", "ingest", "snapshot", "embed", "train", "evaluate", "gate", "score",
        "publish", "report", "housekeeping",
    }  # fmt: skip
    down = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert down["plan"] == {"ingest", "snapshot", "train", "gate", "publish"}
    assert down["ingest"] == {"snapshot"}
    assert down["snapshot"] == {"embed", "train", "evaluate", "score"}
    assert down["embed"] == {"train"}
    assert down["train"] == {"evaluate", "gate"}
    assert down["evaluate"] == {"gate"}
    assert down["gate"] == {"score"}
    assert down["shards"] == {"score"}
    assert down["score"] == {"publish"}
    assert down["publish"] == {"report", "housekeeping"}
    assert dag.catchup is False
    for t in dag.tasks:
        assert t.execution_timeout is not None, t.task_id
        if t.task_id not in (
            "plan",
            "shards",
            "housekeeping",
        ):  # contract checks and cleanup: no retry
            assert t.retries >= 1 and t.retry_exponential_backoff, t.task_id
    # every task that opens the warehouse file, snapshot included, shares the one-slot pool
    writers = {t.task_id for t in dag.tasks if t.pool == "nightrec_warehouse"}
    assert writers == {"ingest", "snapshot", "embed", "evaluate", "gate", "publish", "report"}
    assert set(dag.params.keys()) == {
        "top_n",
        "retrain",
        "as_of",
        "provider",
        "promote",
        "score_shards",
        "alpha",
        "mmr_lambda",
        "category_cap",
        "exclude_items",
        "exclude_user_items",
        "include_items",
        "consumable_days",
        "int8",
        "int8_tolerance",
        "max_train_seconds",
    }
    # the ranking layer's Params default to "off": today's lists unchanged
    assert (dag.params["alpha"], dag.params["mmr_lambda"], dag.params["category_cap"]) == (
        1.0,
        0.0,
        0,
    )
    # the business rules' Params default to "off" too
    rules = ("exclude_items", "exclude_user_items", "include_items", "consumable_days")
    assert [dag.params[name] for name in rules] == [False, False, False, 0]
    # int8 auto: built where the item matrix is large; the flag it was still validates
    int8 = dag.params.get_param("int8")
    assert dag.params["int8"] == "auto"
    assert [int8.resolve(v) for v in ("off", "on", True, False)] == ["off", "on", True, False]
    with pytest.raises(ParamValidationError):
        int8.resolve("maybe")
    # the training budget: empty takes NIGHTREC_MAX_TRAIN_SECONDS (else 420 s)
    budget = dag.params.get_param("max_train_seconds")
    assert dag.params["max_train_seconds"] is None and budget.resolve(1800) == 1800
    for bad in (0, -5, "ten", 8 * 86_400):
        with pytest.raises(ParamValidationError):
            budget.resolve(bad)
    assert dag.get_task("score").is_mapped if hasattr(dag.get_task("score"), "is_mapped") else True
    outlets = {t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets}
    assert outlets == {"publish": ["nightrec_recommendations"]}
    ingest_dag = dagbag.get_dag("ingest_events")
    assert [a.name for a in ingest_dag.get_task("ingest").outlets] == ["nightrec_events"]
    assert ingest_dag.get_task("ingest").pool == "nightrec_warehouse"


def test_importing_dag_files_loads_no_heavy_modules():
    code = (
        "import runpy, sys; [runpy.run_path(p) for p in sys.argv[1:]]; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    files = [str(p) for p in sorted((REPO / "dags").glob("*.py"))]
    out = subprocess.run(
        [sys.executable, "-c", code, *files],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), out.stdout


def test_end_to_end_dag_run(dagbag, settings, monkeypatch, caplog, capfd):
    from nightrec.synth import SynthConfig, generate

    monkeypatch.setenv("NIGHTREC_HOME", str(settings.home))
    monkeypatch.setenv("NIGHTREC_MODELS_DIR", str(settings.models_dir))
    generate(SynthConfig(users=120, items=40, seed=3), settings.landing)

    dag = dagbag.get_dag(DAG_ID)
    conf = {
        "as_of": AS_OF.isoformat(),
        "top_n": 7,
        "provider": "cpu",
        "score_shards": 2,
        "max_train_seconds": 300,
    }
    with caplog.at_level("INFO"):
        run = dag.test(run_conf=conf)
    # quiet task logs: no third-party INFO chatter from the ONNX export, no progress bars
    chatter = [
        r
        for r in caplog.records
        if r.name.split(".")[0] in ("onnxscript", "onnx_ir", "transformers")
        and r.levelname in ("DEBUG", "INFO")
    ]
    assert chatter == []
    assert "Loading weights" not in capfd.readouterr().err
    assert str(run.state) in ("success", "DagRunState.SUCCESS")

    scores = [ti for ti in run.get_task_instances() if ti.task_id == "score"]
    assert sorted(ti.map_index for ti in scores) == [0, 1]  # scoring mapped over 2 shards
    with duckdb.connect(str(settings.serving / "serving.duckdb"), read_only=True) as con:
        users, rows, runs, per_user = con.execute(
            "select count(distinct user_id), count(*), count(distinct run_id), max(rank) "
            "from recommendations"
        ).fetchone()
        run_id = con.execute("select any_value(run_id) from recommendations").fetchone()[0]
    assert users == 120
    assert rows == 120 * 7 and per_user == 7
    assert runs == 1 and run_id == run.run_id
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        recorded = con.execute(
            "select model_version, provider from runs where run_id = $1", [run.run_id]
        ).fetchone()
        steps = dict(
            con.execute(
                "select step, count(*) from run_metrics where run_id = $1 group by step",
                [run.run_id],
            ).fetchall()
        )
        scored = con.execute(
            "select value from run_metrics where run_id = $1 and step = 'score' "
            "and metric = 'users'",
            [run.run_id],
        ).fetchone()
    assert recorded is not None and recorded[1] == "CPUExecutionProvider"
    # the run's training budget reached the train step (its manifest's config)
    manifest = json.loads((settings.models_dir / recorded[0] / registry.MANIFEST).read_text())
    assert manifest["config"]["max_train_seconds"] == 300
    assert set(steps) == {"snapshot", "embed", "train", "score", "publish"}
    assert sorted(p.name for p in settings.scores_dir(run.run_id).glob("shard-*")) == [
        "shard-00000-of-00002",
        "shard-00001-of-00002",
    ]
    assert scored == (120.0,)
    # evaluated before promotion: figures, the gate's decision and the report of this run
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        figures = con.execute(
            "select count(*), count(distinct model) from eval_metrics where run_id = $1",
            [run.run_id],
        ).fetchone()
        gate = con.execute(
            "select candidate, scored_with, reason from gate_decisions where run_id = $1",
            [run.run_id],
        ).fetchone()
    assert figures[0] > 0 and figures[1] == 4  # nightrec and the three baselines
    assert gate is not None and gate[1] == recorded[0] and gate[2]
    from nightrec.eval_store import reports_dir

    report = reports_dir(settings, run.run_id) / "report.html"
    assert report.is_file() and "<svg" in report.read_text()


def test_manual_run_params(dagbag, settings, monkeypatch):
    """A manual run without retraining scores with the promoted model at its own top_n."""
    from nightrec.synth import SynthConfig, generate

    monkeypatch.setenv("NIGHTREC_HOME", str(settings.home))
    monkeypatch.setenv("NIGHTREC_MODELS_DIR", str(settings.models_dir))
    generate(SynthConfig(users=80, items=30, seed=5), settings.landing)
    dag = dagbag.get_dag(DAG_ID)

    # retrain off with no promoted model: a contract error, failed without retries
    first = dag.test(run_conf={"as_of": AS_OF.isoformat(), "retrain": False})
    assert "success" not in str(first.state).lower()

    dag.test(run_conf={"as_of": AS_OF.isoformat(), "top_n": 4, "retrain": True})
    version = (settings.models_dir / "current").resolve().name
    serving = settings.serving / "current" / "serving.duckdb"
    with duckdb.connect(str(serving), read_only=True) as con:
        (top,) = con.execute(
            "select item_id from recommendations where rank = 1 "
            "group by item_id order by count(*) desc, item_id limit 1"
        ).fetchone()
    # a global exclusion list, loaded into the warehouse, applied by its Param
    from nightrec.config import Settings
    from nightrec.rules import load

    rules_csv = settings.home / "exclude.csv"
    rules_csv.write_text(f"item_id,reason\n{top},recall\n")
    load(Settings.from_env(), "exclude_items", rules_csv)
    conf = {"as_of": AS_OF.isoformat(), "top_n": 3, "retrain": False, "exclude_items": True}
    run = dag.test(run_conf=conf)
    assert "success" in str(run.state).lower()
    assert (settings.models_dir / "current").resolve().name == version
    with duckdb.connect(str(serving), read_only=True) as con:
        models, max_rank, run_ids, excluded = con.execute(
            "select count(distinct model_version), max(rank), list(distinct run_id), "
            "count(*) filter (where item_id = $1) from recommendations",
            [top],
        ).fetchone()
    assert models == 1 and max_rank == 3 and run_ids == [run.run_id]
    assert excluded == 0
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        (removed,) = con.execute(
            "select value from run_metrics where run_id = $1 and step = 'rules' "
            "and metric = 'exclude_items_removed'",
            [run.run_id],
        ).fetchone()
    assert removed > 0


def test_bad_param_is_refused(dagbag):
    dag = dagbag.get_dag(DAG_ID)
    with pytest.raises(Exception, match="top_n|1000|maximum"):
        dag.test(run_conf={"top_n": 5000})


def test_unknown_conf_key_is_refused(dagbag, settings, monkeypatch):
    """A typo such as ``topn`` fails the run at ``plan``, before any step touches state."""
    monkeypatch.setenv("NIGHTREC_HOME", str(settings.home))
    monkeypatch.setenv("NIGHTREC_MODELS_DIR", str(settings.models_dir))
    run = dagbag.get_dag(DAG_ID).test(run_conf={"as_of": AS_OF.isoformat(), "topn": 5})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert "success" not in str(run.state).lower()
    assert "failed" in states["plan"] and "success" not in states.get("ingest", "")
    assert not settings.warehouse.exists()


def test_failure_calls_the_deployments_notifier(dagbag, settings, monkeypatch):
    """A failed task logs one summary line and POSTs it to NIGHTREC_NOTIFY_URL."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from nightrec.synth import SynthConfig, generate

    got: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NIGHTREC_NOTIFY_URL", f"http://127.0.0.1:{server.server_port}/hook")
    monkeypatch.setenv("NIGHTREC_HOME", str(settings.home))
    monkeypatch.setenv("NIGHTREC_MODELS_DIR", str(settings.models_dir))
    generate(SynthConfig(users=30, items=12, seed=5), settings.landing)
    try:
        # retrain off with no promoted model: a contract error in `train`
        run = dagbag.get_dag(DAG_ID).test(run_conf={"as_of": AS_OF.isoformat(), "retrain": False})
    finally:
        server.shutdown()
    assert "success" not in str(run.state).lower()
    assert len(got) == 1, got
    assert got[0]["task_id"] == "train" and got[0]["dag_id"] == DAG_ID
    assert "no promoted model" in got[0]["text"] and got[0]["run_id"] == run.run_id
