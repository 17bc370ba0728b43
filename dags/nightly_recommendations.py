"""
### Nightly recommendations

Ingest new landing files into the DuckDB warehouse, cut a snapshot, embed item text with
the pretrained encoder (cached), train a new encoder version and export it to ONNX
(parity-checked), evaluate its configuration against the baselines on held-out data,
promote it only if it passes the gate (else the live model keeps serving), score every
user with ONNX Runtime in `score_shards` mapped tasks, publish a new serving version,
write the run's quality report (`reports/<run_id>/report.html`) and prune old state.

**Where the tables are** (`NIGHTREC_HOME`, default `./var`): readers open
`serving/serving.duckdb` (views `recommendations`, `items`, `serving_info`,
`recommendations_all`, tables `runs`, `run_metrics`, `serving_versions`) or resolve
`serving/current.json` once and read the versioned Parquet file it names. Never the
warehouse: it belongs to the pipeline.

**Backfills and old dates.** `current` (serving and model) moves only forward in data
time: a run for a date older than the live one publishes its version (queryable by
`run_id` in `recommendations_all`) without serving it, unless `promote` is on. A future
`as_of` is refused.

**Rollback.** Trigger `rollback_recommendations` (Param: the version), or run
`nightrec rollback [--version ID]`.

**Params**: `as_of`, `top_n`, `retrain`, `provider`, `promote`, `score_shards`; the ranking
layer's `alpha`, `mmr_lambda`, `category_cap`; the business rules' `exclude_items`,
`exclude_user_items`, `include_items`, `consumable_days` (all off by default). Conf keys
that are not Params are refused. Tasks that open the warehouse share the one-slot pool
`nightrec_warehouse`. All logic lives in the `nightrec` package (folder `tasks/`).
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task

WAREHOUSE_POOL = "nightrec_warehouse"
EVENTS = Asset("nightrec_events")  # new rows in the warehouse (ingest_events)
RECOMMENDATIONS = Asset("nightrec_recommendations")  # a published serving version
CRON = os.environ.get("NIGHTREC_CRON", "0 2 * * *")
# NIGHTREC_SCHEDULE: "cron" (default), "asset" (after every ingest with new rows), "both"
_MODE = os.environ.get("NIGHTREC_SCHEDULE", "cron")
SCHEDULE: object = {
    "cron": CRON,
    "asset": [EVENTS],
    "both": AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=[EVENTS]
    ),
}.get(_MODE, CRON)
# train, embed and score run on the GPU workers' queue when the deployment has one
GPU = {"queue": os.environ["NIGHTREC_GPU_QUEUE"]} if os.environ.get("NIGHTREC_GPU_QUEUE") else {}

PARAMS = {
    "as_of": Param(
        None,
        type=["null", "string"],
        format="date",
        title="As of",
        description="Last day of data (YYYY-MM-DD); empty: the day before the run. "
        "Not after today.",
    ),
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
    "provider": Param(
        "auto",
        type="string",
        enum=["auto", "cpu", "cuda"],
        title="ONNX Runtime provider",
        description="auto: CUDA when available, else CPU.",
    ),
    "promote": Param(
        False,
        type="boolean",
        title="Promote",
        description="Serve this run and its model even if its date is older than the live one.",
    ),
    "alpha": Param(
        1.0,
        type="number",
        minimum=0,
        maximum=1,
        title="Similarity weight (alpha)",
        description="score = alpha * similarity + (1 - alpha) * recent popularity; "
        "1 (default): the encoder's order.",
    ),
    "mmr_lambda": Param(
        0.0,
        type="number",
        minimum=0,
        maximum=1,
        title="Diversity (MMR lambda)",
        description="0 (default): off; towards 1, lists of less alike items (text vectors).",
    ),
    "category_cap": Param(
        0,
        type="integer",
        minimum=0,
        maximum=1000,
        title="Items per category",
        description="At most this many items of one category in a list; 0 (default): no cap.",
    ),
    "exclude_items": Param(
        False,
        type="boolean",
        title="Rule: global exclusion list",
        description="Never recommend the items of the exclude_items list "
        "(`nightrec rules load --kind exclude_items`).",
    ),
    "exclude_user_items": Param(
        False,
        type="boolean",
        title="Rule: per-user exclusions",
        description="Never recommend a user the items listed for them (bought elsewhere, "
        "hidden): the exclude_user_items list.",
    ),
    "include_items": Param(
        False,
        type="boolean",
        title="Rule: inclusion lists",
        description="Recommend only items of the include_items lists: the global one (rows "
        "without user_id) for everyone, a user's own for that user.",
    ),
    "consumable_days": Param(
        0,
        type="integer",
        minimum=0,
        maximum=36500,
        title="Rule: consumables again after (days)",
        description="A consumable (consumables list: item or category) bought at least this "
        "many days before as_of may be recommended again; 0 (default): never, like any "
        "item the user interacted with.",
    ),
    "int8": Param(
        "auto",
        type=["string", "boolean"],
        enum=["auto", "on", "off", True, False],
        title="int8 scorer",
        description="Also quantize the scorer to int8; it serves (on CPU) only if its held-out "
        "NDCG@10 drop is within the tolerance. auto: where the item matrix (items x width) "
        "has at least a million cells, where int8 pays, and no CUDA serves fp32/fp16. The "
        "manifest records the decision.",
    ),
    "int8_tolerance": Param(
        0.01,
        type="number",
        minimum=0,
        maximum=1,
        title="int8 tolerance",
        description="Largest relative drop of held-out NDCG@10 ((fp32 - int8) / fp32) "
        "that the int8 scorer may cost.",
    ),
    "max_train_seconds": Param(
        None,
        type=["null", "number"],
        exclusiveMinimum=0,
        maximum=7 * 86_400,
        title="Training time budget (s)",
        description="Time budget of the train step, from reading the snapshot to the export: "
        "no epoch starts that would overrun it. Empty: NIGHTREC_MAX_TRAIN_SECONDS, else 420.",
    ),
    "score_shards": Param(
        1,
        type="integer",
        minimum=1,
        maximum=256,
        title="Scoring shards",
        description="Users are scored in this many parallel mapped tasks.",
    ),
}


def _train_config(params):
    """The training Params as a TrainConfig (a bad value fails the task cleanly)."""
    from nightrec.config import TrainConfig

    budget = params.get("max_train_seconds")
    return _call(TrainConfig) if budget is None else _call(TrainConfig, max_train_seconds=budget)


def _rank_config(params):
    """The ranking layer's Params as a RankConfig (a bad value fails the task cleanly)."""
    from nightrec.ranking import RankConfig

    return _call(
        RankConfig,
        alpha=params["alpha"],
        mmr_lambda=params["mmr_lambda"],
        category_cap=params["category_cap"],
    )


def _rules_config(params):
    """The business rules' Params as a RulesConfig."""
    from nightrec.rules import RulesConfig

    return _call(
        RulesConfig,
        exclude_items=params["exclude_items"],
        exclude_user_items=params["exclude_user_items"],
        include_items=params["include_items"],
        consumable_days=params["consumable_days"],
    )


def _call(fn, *args, **kwargs):
    """Run a step with owner-only file modes; a broken data contract, a full disk or a
    read-only volume fails the task at once (a retry cannot fix them) with one clear line."""
    from airflow.sdk.exceptions import AirflowFailException

    from nightrec.config import ContractError, apply_umask
    from nightrec.errors import describe

    apply_umask()
    try:
        return fn(*args, **kwargs)
    except ContractError as exc:
        raise AirflowFailException(str(exc)) from exc
    except Exception as exc:
        why = describe(exc)
        if why:
            raise AirflowFailException(why) from exc
        raise


def on_failure(context) -> None:
    """One clear summary line in the log, and the deployment's notifier (if configured)."""
    from nightrec.ops import report_failure

    report_failure(context)


DEFAULT_ARGS = {
    "owner": "nightrec",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
    "execution_timeout": dt.timedelta(hours=3),
    "on_failure_callback": on_failure,
}


@dag(
    dag_id="nightly_recommendations",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nightrec", "recommendations"],
    doc_md=__doc__,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
)
def nightly_recommendations():
    @task(retries=0)
    def plan(**context) -> dict:
        """Check the conf and fix the run's date: later tasks read this, not the Params."""
        from nightrec.config import check_as_of, parse_date
        from nightrec.ops import check_conf

        _call(check_conf, context["dag_run"].conf, PARAMS)
        params = context["params"]
        if params.get("as_of"):
            as_of = _call(parse_date, params["as_of"])
        else:
            when = context.get("logical_date") or context["dag_run"].run_after
            as_of = (when - dt.timedelta(days=1)).date()
        _call(check_as_of, as_of)
        return {"as_of": as_of.isoformat(), "promote": params["promote"]}

    @task(retries=0)
    def shards(**context) -> list[int]:
        """One mapped scoring task per shard (users split by a stable hash of their id)."""
        return list(range(context["params"]["score_shards"]))

    @task(pool=WAREHOUSE_POOL)
    def ingest() -> dict:
        from nightrec.config import Settings
        from nightrec.ingest import ingest

        return _call(ingest, Settings.from_env()).totals

    @task(pool=WAREHOUSE_POOL)
    def snapshot(plan: dict) -> str:
        from nightrec.config import Settings, parse_date
        from nightrec.snapshot import snapshot

        return str(_call(snapshot, Settings.from_env(), parse_date(plan["as_of"])))

    @task(pool=WAREHOUSE_POOL, **GPU)
    def embed(snapshot_dir: str) -> dict:
        from pathlib import Path

        from nightrec.config import Settings
        from nightrec.embed import embed

        return _call(embed, Settings.from_env(), Path(snapshot_dir))

    @task(**GPU)
    def train(snapshot_dir: str, plan: dict, **context) -> str:
        from pathlib import Path

        from nightrec import registry
        from nightrec.config import Int8Config, Settings, parse_date
        from nightrec.train import train

        settings = Settings.from_env()
        params = context["params"]
        if not params["retrain"]:
            return _call(registry.current, settings.models_dir).name
        int8 = _call(Int8Config, enabled=params["int8"], tolerance=params["int8_tolerance"])
        as_of = parse_date(plan["as_of"])
        return _call(train, settings, Path(snapshot_dir), as_of, _train_config(params), int8)

    @task(pool=WAREHOUSE_POOL, **GPU)
    def evaluate(snapshot_dir: str, version: str, **context) -> dict | None:
        """Held-out figures of the candidate's configuration and the baselines."""
        from pathlib import Path

        from nightrec.config import Settings
        from nightrec.evaluate import evaluate

        params = context["params"]
        if not params["retrain"]:
            return None  # no candidate: the live model keeps serving
        settings = Settings.from_env()
        # judged as it will be served: the ranking layer and the rules that remove items
        rank, rule = _rank_config(params), _rules_config(params)
        return _call(
            evaluate,
            settings,
            Path(snapshot_dir),
            context["run_id"],
            version,
            _train_config(params),
            None,
            rank,
            rule,
        )

    @task(pool=WAREHOUSE_POOL)
    def gate(version: str, summary: dict | None, plan: dict, **context) -> str:
        """Promote the candidate if it passed (or is forced); returns the version to score."""
        from nightrec.config import Settings
        from nightrec.promotion import decide

        if not context["params"]["retrain"]:
            return version
        settings = Settings.from_env()
        decision = _call(decide, settings, context["run_id"], version, summary, plan["promote"])
        return decision.scored_with

    @task(**GPU)
    def score(shard: int, snapshot_dir: str, model_version: str, **context) -> dict:
        from pathlib import Path

        from nightrec.config import ScoreConfig, Settings
        from nightrec.score import score

        params = context["params"]
        rank = _rank_config(params)
        cfg = _call(
            ScoreConfig,
            top_n=params["top_n"],
            provider=params["provider"],
            num_shards=params["score_shards"],
            shard=shard,
        )
        settings = Settings.from_env()
        rule_cfg = _rules_config(params)
        return _call(
            score,
            settings,
            Path(snapshot_dir),
            context["run_id"],
            cfg,
            model_version,
            rank,
            rule_cfg,
        )

    @task(pool=WAREHOUSE_POOL, outlets=[RECOMMENDATIONS])
    def publish(scored: list, plan: dict, **context) -> dict:
        from nightrec.config import Settings, parse_date
        from nightrec.publish import publish

        settings = Settings.from_env()
        as_of = parse_date(plan["as_of"])
        return _call(publish, settings, context["run_id"], as_of, plan["promote"])

    @task(pool=WAREHOUSE_POOL)
    def report(**context) -> str | None:
        """The run's HTML quality report (reports/<run_id>/report.html)."""
        from nightrec.config import Settings
        from nightrec.report import write_report

        if not context["params"]["retrain"]:
            return None
        return str(_call(write_report, Settings.from_env(), context["run_id"]))

    @task(retries=0)
    def housekeeping() -> dict:
        from nightrec.config import Settings
        from nightrec.retention import prune

        return _call(prune, Settings.from_env())

    run = plan()
    snap = snapshot(run)
    run >> ingest() >> snap
    embedded = embed(snap)
    trained = train(snap, run)
    embedded >> trained
    version = gate(trained, evaluate(snap, trained), run)
    scored = score.partial(snapshot_dir=snap, model_version=version).expand(shard=shards())
    publish(scored, run) >> [report(), housekeeping()]


nightly_recommendations()
