"""The promotion gate: a trained candidate serves only if the evaluation says it may.

    train (candidate, on the whole snapshot) -> evaluate (the candidate's configuration
    retrained on each protocol's training part, beside the baselines) -> decide

The candidate is promoted when it beats every baseline on the gate metric and is not
worse than the live model's recorded figure beyond the tolerance (``EvalConfig``), or
when the ``promote`` Param forces it, or when no model is live yet (something must
serve; the record says it failed). Otherwise the live model keeps serving: this run
scores with it and says why in its log and in ``gate_decisions``. Promotion itself still
obeys the forward-only rule of ``registry.promote``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from nightrec import db, registry
from nightrec.config import ContractError, EvalConfig, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    candidate: str
    live_before: str | None
    passed: bool
    forced: bool
    promoted: bool
    scored_with: str
    reason: str


def decide(
    settings: Settings,
    run_id: str,
    candidate: str,
    summary: dict | None,
    force: bool = False,
    eval_cfg: EvalConfig | None = None,
) -> Decision:
    """Gate ``candidate`` on ``summary`` (from ``evaluate``); promote it or keep the live one."""
    from nightrec.eval_store import live_summary
    from nightrec.evaluate import gate

    eval_cfg = eval_cfg or EvalConfig()
    try:
        live = registry.current(settings.models_dir).name
    except (ContractError, FileNotFoundError):
        live = None
    if summary is None:
        passed, why = False, "not evaluated"
    else:
        baseline = live_summary(settings) if live and live != candidate else None
        passed, why = gate(
            summary, baseline, eval_cfg.gate_metric, eval_cfg.gate_split, eval_cfg.gate_tolerance
        )
    if passed or force or live is None or live == candidate:
        # forward-only still applies (a backfill's model serves its own run, not current)
        promoted = registry.promote(settings.models_dir, candidate, force=force)
        scored_with = candidate
        if passed:
            reason = why
        elif force:
            reason = f"forced by the promote Param; the gate said: {why}"
        elif live is None:
            reason = f"no live model yet, so it serves; the gate said: {why}"
        else:
            reason = f"already live; the gate said: {why}"
    else:
        promoted, scored_with, reason = False, live, f"kept {live}: {why}"
    decision = Decision(candidate, live, passed, force, promoted, scored_with, reason)
    _record(settings, run_id, decision)
    level = logging.INFO if passed else logging.WARNING
    log.log(
        level,
        "gate: %s %s; %s serves this run (%s)",
        candidate,
        "passed" if passed else "failed",
        scored_with,
        reason,
    )
    return decision


def _record(settings: Settings, run_id: str, d: Decision) -> None:
    with db.connect(settings.warehouse) as con:
        db.run(
            con,
            "record_gate",
            {
                "run_id": run_id,
                "candidate": d.candidate,
                "live_before": d.live_before,
                "passed": d.passed,
                "forced": d.forced,
                "promoted": d.promoted,
                "scored_with": d.scored_with,
                "reason": d.reason,
                "decided_at": dt.datetime.now(dt.UTC),
            },
        )
