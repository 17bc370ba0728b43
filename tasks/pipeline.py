"""The whole nightly job as plain calls, for the CLI and the benchmark (the DAG wires the same)."""

from __future__ import annotations

import datetime as dt
import logging
import time

from nightrec.config import (
    Fp16Config,
    Int8Config,
    ScoreConfig,
    Settings,
    TrainConfig,
    check_as_of,
    safe_id,
)
from nightrec.ranking import RankConfig
from nightrec.rules import RulesConfig

log = logging.getLogger(__name__)

RUN_LOCK = ".run.lock"


def default_run_id(as_of: dt.date) -> str:
    return f"manual__{as_of.isoformat()}"


def run_all(
    settings: Settings,
    as_of: dt.date,
    run_id: str | None = None,
    retrain: bool = True,
    train_cfg: TrainConfig | None = None,
    score_cfg: ScoreConfig = ScoreConfig(),
    promote: bool = False,
    rank_cfg: RankConfig | None = None,
    lock_wait_s: float = 0.0,
    rule_cfg: RulesConfig | None = None,
    int8_cfg: Int8Config = Int8Config(),
    fp16_cfg: Fp16Config = Fp16Config(),
) -> dict[str, dict]:
    """ingest -> snapshot -> embed -> train -> evaluate -> gate -> score -> publish -> report.

    Returns each step's result and seconds.

    One run at a time per home: a second ``run`` waits ``lock_wait_s`` for the first, then
    refuses with a message naming it. ``promote`` forces this run's model and serving
    version live even when its date is older than the live one. ``rule_cfg``: the
    business rules scoring applies (None: none). ``int8_cfg``, ``fp16_cfg``: the int8
    (CPU) and fp16 (CUDA) scorers (``quantize``).
    """
    from nightrec import (
        embed,
        evaluate,
        ingest,
        promotion,
        publish,
        registry,
        report,
        score,
        snapshot,
        train,
    )
    from nightrec.locks import file_lock

    check_as_of(as_of)
    run_id = safe_id(run_id or default_run_id(as_of), "run_id")
    train_cfg = train_cfg or TrainConfig()  # made now: its time budget reads the environment
    out: dict[str, dict] = {}

    def step(name, fn, *args, **kwargs):
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        out[name] = {"result": value, "seconds": time.perf_counter() - t}
        return value

    with file_lock(settings.home / RUN_LOCK, wait_s=lock_wait_s, what=f"a run in {settings.home}"):
        step("ingest", lambda: ingest.ingest(settings).totals)
        snap = step("snapshot", snapshot.snapshot, settings, as_of)
        step("embed", embed.embed, settings, snap)
        if retrain:
            candidate = step(
                "train", train.train, settings, snap, as_of, train_cfg, int8_cfg, fp16_cfg
            )
            summary = step(
                "evaluate",
                evaluate.evaluate,
                settings,
                snap,
                run_id,
                candidate,
                train_cfg,
                None,
                rank_cfg,
                rule_cfg,
            )
            decision = step("gate", promotion.decide, settings, run_id, candidate, summary, promote)
            version = decision.scored_with
        else:
            version = step("train", lambda: registry.current(settings.models_dir).name)
        step("score", score.score, settings, snap, run_id, score_cfg, version, rank_cfg, rule_cfg)
        step("publish", publish.publish, settings, run_id, as_of, promote)
        if retrain:
            step("report", lambda: str(report.write_report(settings, run_id)))
    return out
