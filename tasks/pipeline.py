"""The whole nightly job as plain calls, for the CLI and the benchmark (the DAG wires the same)."""

from __future__ import annotations

import datetime as dt
import logging
import time

from nightrec.config import ScoreConfig, Settings, TrainConfig, safe_id

log = logging.getLogger(__name__)


def default_run_id(as_of: dt.date) -> str:
    return f"manual__{as_of.isoformat()}"


def run_all(
    settings: Settings,
    as_of: dt.date,
    run_id: str | None = None,
    retrain: bool = True,
    train_cfg: TrainConfig = TrainConfig(),
    score_cfg: ScoreConfig = ScoreConfig(),
) -> dict[str, dict]:
    """ingest -> snapshot -> embed -> train -> score -> publish; each step's result and seconds."""
    from nightrec import embed, ingest, publish, registry, score, snapshot, train

    run_id = safe_id(run_id or default_run_id(as_of), "run_id")
    out: dict[str, dict] = {}

    def step(name, fn, *args, **kwargs):
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        out[name] = {"result": value, "seconds": time.perf_counter() - t}
        return value

    step("ingest", lambda: ingest.ingest(settings).totals)
    snap = step("snapshot", snapshot.snapshot, settings, as_of)
    step("embed", embed.embed, settings, snap)
    if retrain:
        step("train", train.train, settings, snap, as_of, train_cfg)
    else:
        step("train", lambda: registry.current(settings.models_dir).name)
    step("score", score.score, settings, snap, run_id, score_cfg)
    step("publish", publish.publish, settings, run_id, as_of)
    return out
