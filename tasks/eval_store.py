"""The ``eval_metrics`` table and the reports folder: what evaluate writes, the gate and
the report read.

Rows are ``(run_id, as_of, model_version, protocol, split, model, metric, k, slice,
value, evaluated_at)``; a run's rows are replaced together in one transaction, so a
re-run for the same run id leaves one set of figures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from nightrec import db
from nightrec.config import ContractError, Settings, path_id, safe_id

log = logging.getLogger(__name__)

CANDIDATE = "nightrec"  # the model column of the candidate encoder's rows
COLUMNS = (
    "run_id",
    "as_of",
    "model_version",
    "protocol",
    "split",
    "model",
    "metric",
    "k",
    "slice",
    "value",
    "evaluated_at",
)
Summary = dict[str, dict[str, dict[str, dict[str, float]]]]  # protocol/split/model/figure


def reports_dir(settings: Settings, run_id: str | None = None) -> Path:
    """``<home>/reports``, or the folder of one run's report and ``evaluation.json``."""
    root = settings.home / "reports"
    return root if run_id is None else root / path_id(run_id, "run_id")


def figure(metric: str, k: int) -> str:
    """The summary key of a metric: ``ndcg@10``; ``users`` for the count."""
    return f"{metric}@{k}" if k else metric


def write_rows(settings: Settings, run_id: str, rows: pl.DataFrame) -> int:
    """Replace the run's figures with ``rows`` (columns ``COLUMNS``); returns rows written."""
    safe_id(run_id, "run_id")
    if set(rows.columns) != set(COLUMNS):
        raise ContractError(f"eval_metrics rows need columns {COLUMNS}, got {rows.columns}")
    others = rows.filter(pl.col("run_id") != run_id).height
    if others:
        raise ContractError(f"{others} eval_metrics rows belong to a run other than {run_id}")
    with db.connect(settings.warehouse) as con:
        con.register("new_eval_metrics", rows.select(COLUMNS))
        try:
            con.execute("begin")
            db.run(con, "eval_metrics_delete", {"run_id": run_id})
            db.run(con, "eval_metrics_insert")
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        finally:
            con.unregister("new_eval_metrics")
    return rows.height


def _read(settings: Settings, query: str, params: dict[str, Any]) -> pl.DataFrame | None:
    """A query on the warehouse, read-only; None when there is no warehouse or no table yet."""
    if not settings.warehouse.is_file():
        return None
    with db.connect(settings.warehouse, read_only=True) as con:
        try:
            return db.frame(con, query, params)
        except duckdb.CatalogException:  # a warehouse written before eval_metrics existed
            return None


def run_rows(settings: Settings, run_id: str) -> pl.DataFrame:
    """Every figure of one run (empty when it was never evaluated)."""
    found = _read(settings, "eval_run", {"run_id": safe_id(run_id, "run_id")})
    return found if found is not None else pl.DataFrame(schema=dict.fromkeys(COLUMNS, pl.Utf8))


def trend(
    settings: Settings, metric: str = "ndcg", k: int = 10, slice_: str = "all", runs: int = 30
) -> pl.DataFrame:
    """One figure of every model over the latest ``runs`` runs, oldest first.

    Columns: run_id, as_of, evaluated_at, model_version, protocol, split, model, value.
    """
    params = {"metric": metric, "k": k, "slice": slice_, "runs": runs}
    found = _read(settings, "eval_trend", params)
    return found if found is not None else pl.DataFrame()


def summarize(rows: pl.DataFrame) -> Summary:
    """{protocol: {split: {model: {"ndcg@10": .., "users": ..}}}} from slice ``all`` rows."""
    out: Summary = {}
    for r in rows.filter(pl.col("slice") == "all").iter_rows(named=True):
        models = out.setdefault(r["protocol"], {}).setdefault(r["split"], {})
        models.setdefault(r["model"], {})[figure(r["metric"], r["k"])] = r["value"]
    return out


def live_summary(settings: Settings, model_version: str | None = None) -> Summary | None:
    """The figures the live model was promoted on, from the latest run that evaluated it.

    ``model_version`` defaults to the promoted version. None when nothing is promoted or
    the version was never evaluated (then the gate checks only the baselines).
    """
    if model_version is None:
        from nightrec import registry

        try:
            model_version = registry.current(settings.models_dir).name
        except (ContractError, FileNotFoundError):
            return None
    found = _read(settings, "eval_live", {"model_version": model_version})
    if found is None or found.height == 0:
        return None
    return summarize(found.with_columns(pl.lit("all").alias("slice")))


def latest_run_of(settings: Settings, model_version: str) -> str | None:
    """The run that most recently evaluated ``model_version``, or None."""
    found = _read(
        settings,
        "select run_id from eval_metrics where model_version = $v "
        "order by evaluated_at desc, run_id desc limit 1",
        {"v": model_version},
    )
    return None if found is None or found.height == 0 else str(found["run_id"][0])
