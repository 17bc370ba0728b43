"""The promotion gate on real model versions: refuses a worse model, promotes a better one
and a forced one, and records every decision."""

from __future__ import annotations

import duckdb
import pytest

from nightrec import embed, ingest, promotion, registry, snapshot, train
from nightrec.config import Settings, TrainConfig
from nightrec.synth import SynthConfig, generate
from tests.conftest import AS_OF


def summary(nightrec: float, best_baseline: float) -> dict:
    """A hand-made evaluation summary: the candidate's and the baselines' validation NDCG@10."""
    models = {
        "nightrec": {"ndcg@10": nightrec},
        "popular": {"ndcg@10": best_baseline / 2},
        "item_knn": {"ndcg@10": best_baseline},
        "transition": {"ndcg@10": best_baseline * 0.9},
    }
    return {"loo": {"validation": models, "test": models}}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory) -> tuple[Settings, str, str]:
    root = tmp_path_factory.mktemp("gate")
    settings = Settings.from_env(home=root / "home", models_dir=root / "models")
    generate(SynthConfig(users=60, items=20, seed=9), settings.landing)
    ingest.ingest(settings)
    snap = snapshot.snapshot(settings, AS_OF)
    embed.embed(settings, snap)
    first = train.train(settings, snap, AS_OF, TrainConfig(epochs=1))
    second = train.train(settings, snap, AS_OF, TrainConfig(epochs=2))
    assert first != second
    return settings, first, second


def _recorded(settings: Settings, run_id: str) -> tuple:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(
            "select passed, forced, promoted, scored_with, reason from gate_decisions "
            "where run_id = ?",
            [run_id],
        ).fetchone()


def test_gate_refuses_worse_promotes_better_and_forced(two_versions):
    settings, first, second = two_versions

    # nothing live yet: the first candidate serves even though it lost, and says so
    d = promotion.decide(settings, "r1", first, summary(0.10, 0.20))
    assert not d.passed and d.promoted and d.scored_with == first
    assert "no live model" in d.reason and "does not beat item_knn" in d.reason
    assert registry.current(settings.models_dir).name == first

    # a candidate that loses to a baseline is refused; the live model keeps serving
    d = promotion.decide(settings, "r2", second, summary(0.10, 0.20))
    assert not d.passed and not d.promoted and d.scored_with == first
    assert d.reason.startswith(f"kept {first}") and "item_knn" in d.reason
    assert registry.current(settings.models_dir).name == first
    assert _recorded(settings, "r2")[:4] == (False, False, False, first)

    # the promote Param forces it
    d = promotion.decide(settings, "r3", second, summary(0.10, 0.20), force=True)
    assert d.promoted and d.forced and d.scored_with == second and "forced" in d.reason
    assert registry.current(settings.models_dir).name == second

    # a candidate that beats every baseline (and the live model has no recorded figures)
    d = promotion.decide(settings, "r4", first, summary(0.30, 0.20))
    assert d.passed and d.promoted and d.scored_with == first
    assert registry.current(settings.models_dir).name == first
    assert _recorded(settings, "r4")[:4] == (True, False, True, first)


def test_gate_refuses_a_model_worse_than_the_live_ones_figures(two_versions):
    """Beats the baselines but falls below the live model's recorded figure."""
    from nightrec import eval_store
    from nightrec.evaluate import gate

    settings, first, second = two_versions
    registry.promote(settings.models_dir, first, force=True)
    live = {"loo": {"validation": {"nightrec": {"ndcg@10": 0.40}}}}
    passed, why = gate(summary(0.30, 0.20), live, tolerance=0.02)
    assert not passed and "below the live model's 0.4000" in why
    passed, _ = gate(summary(0.395, 0.20), live, tolerance=0.02)
    assert passed  # within the tolerance
    assert eval_store.live_summary(settings) is None  # first was never evaluated in this home
