"""
### Nightly recommendations

Ingest landing files into the DuckDB warehouse, cut a snapshot, embed item text with
the pretrained encoder (cached), retrain the encoder and export it to ONNX (promoted
only after the parity check), score every user with ONNX Runtime, and publish a new
serving DuckDB + Parquet atomically.

**Params** (manual runs): `top_n`, `retrain`, `as_of` (last day of data; default the
day before the run's logical date), `provider` (`auto` uses CUDA when present).

Tasks that write the warehouse run in the one-slot pool `nightrec_warehouse`.
All logic lives in the `nightrec` package (folder `tasks/`); these wrappers only call it.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Param, dag, task

WAREHOUSE_POOL = "nightrec_warehouse"


def _as_of(context) -> dt.date:
    """The ``as_of`` Param, else the day before the logical date (data through yesterday)."""
    from nightrec.config import parse_date

    if context["params"].get("as_of"):
        return parse_date(context["params"]["as_of"])
    when = context.get("logical_date") or context["dag_run"].run_after
    return (when - dt.timedelta(days=1)).date()


def _call(fn, *args, **kwargs):
    """Run a step; a broken data contract fails the task at once instead of retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    from nightrec.config import ContractError

    try:
        return fn(*args, **kwargs)
    except ContractError as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id="nightly_recommendations",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nightrec", "recommendations"],
    doc_md=__doc__,
    default_args={
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "execution_timeout": dt.timedelta(hours=3),
    },
    params={
        "top_n": Param(
            100,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Top N",
            description="Recommendations per user.",
        ),
        "retrain": Param(
            True,
            type="boolean",
            title="Retrain",
            description="Train a new model version; off scores with the current one.",
        ),
        "as_of": Param(
            None,
            type=["null", "string"],
            format="date",
            title="As of",
            description="Last day of data (YYYY-MM-DD); empty: the day before the run.",
        ),
        "provider": Param(
            "auto",
            type="string",
            enum=["auto", "cpu", "cuda"],
            title="ONNX Runtime provider",
            description="auto: CUDA when available, else CPU.",
        ),
    },
)
def nightly_recommendations():
    @task(pool=WAREHOUSE_POOL)
    def ingest() -> dict:
        from nightrec.config import Settings
        from nightrec.ingest import ingest

        return _call(ingest, Settings.from_env()).totals

    @task
    def snapshot(**context) -> str:
        from nightrec.config import Settings
        from nightrec.snapshot import snapshot

        return str(_call(snapshot, Settings.from_env(), _as_of(context)))

    @task(pool=WAREHOUSE_POOL)
    def embed(snapshot_dir: str) -> dict:
        from pathlib import Path

        from nightrec.config import Settings
        from nightrec.embed import embed

        return _call(embed, Settings.from_env(), Path(snapshot_dir))

    @task
    def train(snapshot_dir: str, **context) -> str:
        from pathlib import Path

        from nightrec import registry
        from nightrec.config import Settings
        from nightrec.train import train

        settings = Settings.from_env()
        if not context["params"]["retrain"]:
            return _call(registry.current, settings.models_dir).name
        return _call(train, settings, Path(snapshot_dir), _as_of(context))

    @task
    def score(snapshot_dir: str, model_version: str, **context) -> dict:
        from pathlib import Path

        from nightrec.config import ScoreConfig, Settings
        from nightrec.score import score

        cfg = ScoreConfig(top_n=context["params"]["top_n"], provider=context["params"]["provider"])
        return _call(score, Settings.from_env(), Path(snapshot_dir), context["run_id"], cfg)

    @task(pool=WAREHOUSE_POOL)
    def publish(scored: dict, **context) -> dict:
        from nightrec.config import Settings
        from nightrec.publish import publish

        return _call(publish, Settings.from_env(), context["run_id"], _as_of(context))

    snap = snapshot()
    ingest() >> snap
    embedded = embed(snap)
    version = train(snap)
    embedded >> version
    publish(score(snap, version))


nightly_recommendations()
