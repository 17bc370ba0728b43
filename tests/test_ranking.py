"""The ranking layer: known answers on tiny candidate lists, and through the score step."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import AS_OF
from test_scoring import TOP_N, isolated, read_table, run1  # noqa: F401  (the fixture)

from nightrec import publish, ranking, score
from nightrec.config import ContractError, ScoreConfig
from nightrec.ranking import Layer, RankConfig

# five candidates of one user, best encoder score first; item indices 1..5
IDX = np.array([[1, 2, 3, 4, 5]])
SCORE = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
POP = np.array([0.0, 0.0, 0.2, 0.4, 0.6, 1.0], dtype=np.float32)  # item 5 the most popular


def _layer(cfg: RankConfig, vectors=None, category=None) -> Layer:
    return Layer(POP, vectors, category, cfg)


def test_defaults_are_off_and_alpha_one_keeps_the_encoder_order() -> None:
    assert not RankConfig().active
    assert not RankConfig(alpha=1.0, mmr_lambda=0.0, category_cap=0, candidates=7).active
    order, _, trending, ok = ranking.rerank(_layer(RankConfig(category_cap=99)), IDX, SCORE, 5)
    assert order.tolist() == [[0, 1, 2, 3, 4]] and ok.all() and not trending.any()


def test_alpha_zero_orders_by_popularity_and_says_trending() -> None:
    order, score_, trending, _ = ranking.rerank(_layer(RankConfig(alpha=0.0)), IDX, SCORE, 3)
    assert IDX[0, order[0]].tolist() == [5, 4, 3]
    assert np.allclose(score_[0], [1.0, 0.6, 0.4])
    assert trending.all()


def test_blend_by_hand() -> None:
    # sim (min-max over the candidates) = 1, .75, .5, .25, 0; pop = 0, .2, .4, .6, 1
    # alpha .5: .5, .475, .45, .425, .5 -> items 1 and 5 tie at .5: the earlier candidate first
    order, score_, trending, _ = ranking.rerank(_layer(RankConfig(alpha=0.5)), IDX, SCORE, 5)
    assert IDX[0, order[0]].tolist() == [1, 5, 2, 3, 4]
    assert np.allclose(score_[0], [0.5, 0.5, 0.475, 0.45, 0.425])
    assert trending[0].tolist() == [False, True, False, False, True]


def test_mmr_lambda_one_gives_the_most_diverse_list() -> None:
    # three pairs of identical text vectors, the pairs orthogonal: candidates 1,2 | 3,4 | 5,6
    vec = np.zeros((7, 3), np.float32)
    vec[[1, 2], 0] = vec[[3, 4], 1] = vec[[5, 6], 2] = 1.0
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    score_ = np.array([[6, 5, 4, 3, 2, 1]], np.float32)
    layer = Layer(np.zeros(7, np.float32), vec, None, RankConfig(mmr_lambda=1.0))
    order, _, _, ok = ranking.rerank(layer, idx, score_, 3)
    chosen = idx[0, order[0]]
    assert ok.all() and chosen.tolist() == [1, 3, 5]  # one of each pair, best first

    def ild(items) -> float:
        return float(np.mean([1 - vec[a] @ vec[b] for a, b in itertools.combinations(items, 2)]))

    best = max(ild(c) for c in itertools.combinations(range(1, 7), 3))
    assert ild(chosen) == best  # no valid list of three is more diverse
    plain, *_ = ranking.rerank(
        Layer(np.zeros(7, np.float32), vec, None, RankConfig(mmr_lambda=0.0, category_cap=9)),
        idx,
        score_,
        3,
    )
    assert idx[0, plain[0]].tolist() == [1, 2, 3] and ild([1, 2, 3]) < best


def test_category_cap_keeps_order_otherwise_and_lists_end_when_nothing_is_left() -> None:
    category = np.array([-9, 0, 0, 0, 1, -6])  # item 5 has no category: a category of its own
    layer = _layer(RankConfig(category_cap=1), category=category)
    order, _, _, ok = ranking.rerank(layer, IDX, SCORE, 5)
    assert IDX[0, order[0][ok[0]]].tolist() == [1, 4, 5]
    assert ok[0].tolist() == [True, True, True, False, False]
    layer = _layer(RankConfig(category_cap=2), category=category)
    order, _, _, ok = ranking.rerank(layer, IDX, SCORE, 5)
    assert IDX[0, order[0][ok[0]]].tolist() == [1, 2, 4, 5]


def test_missing_candidates_stay_missing() -> None:
    score_ = SCORE.copy()
    score_[0, 3:] = -np.inf  # only three candidates
    order, got, _, ok = ranking.rerank(_layer(RankConfig(alpha=0.3)), IDX, score_, 5)
    assert ok[0].tolist() == [True, True, True, False, False]
    assert set(IDX[0, order[0][ok[0]]]) == {1, 2, 3} and np.isinf(got[0, 3:]).all()


def test_reasons() -> None:
    trending = np.array([[True, False, False]])
    because = np.array([[7, 8, 9]])
    recent = np.array([[0, 8, 3]])  # the user's last items (0 = none)
    assert ranking.reasons(trending, because, recent).tolist() == [
        ["trending", "similar_to_recent", "history"]
    ]


def test_similar_items_by_hand_never_itself_nor_inactive() -> None:
    m = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2], [1, 0]], np.float32)
    active = np.array([False, True, True, True, True, False])  # item 5 inactive
    items, sim, cos = ranking.similar_items(m, active, 2)
    assert items.tolist() == [1, 2, 3, 4]
    assert sim.tolist() == [[2, 4], [1, 4], [4, 2], [2, 1]]
    for row, item in enumerate(items):
        assert item not in sim[row] and 5 not in sim[row]
    assert cos[0, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1))


def _reference_top_k(x: np.ndarray, k: int) -> np.ndarray:
    """The brute-force answer: each row's columns by value, then lower column first."""
    return np.stack([np.lexsort((np.arange(x.shape[1]), -row))[:k] for row in x])


@pytest.mark.parametrize("n,k", [(40, 20), (300, 7), (1000, 20), (5003, 20), (20011, 3)])
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_rows_is_the_brute_force_answer(n: int, k: int, ties: bool) -> None:
    """Exact in both stages, with ties at the k-th place inside and across blocks."""
    rng = np.random.default_rng(n + k)
    x = rng.standard_normal((32, n)).astype(np.float32)
    if ties:  # a handful of distinct values: ties everywhere, also among block maxima
        x = np.round(x * 2) / 2
    x[:2] = 0.0  # a whole row tied
    x[3, ::2] = -np.inf
    x[4, : n - k] = -np.inf  # exactly k finite cells, all at the end
    x[5, : n - k + 1] = -np.inf  # k - 1 finite cells: the k-th place ties at -inf
    vals, cols = ranking.top_k_rows(torch.from_numpy(x.copy()), k)
    ref = _reference_top_k(x, k)
    assert np.array_equal(cols, ref)
    assert np.array_equal(vals, np.take_along_axis(x, ref, axis=1))


def test_similar_items_two_stage_matches_a_full_sort() -> None:
    """A catalog large enough for the two-stage top k, with duplicated vectors (exact
    ties across blocks) and inactive items: the brute-force cosine order, by lower index."""
    rng = np.random.default_rng(7)
    m = rng.standard_normal((3001, 8)).astype(np.float32)
    m[1500:1600] = m[100:200]  # duplicates: ties at every place
    active = rng.random(3001) > 0.1
    active[0] = False
    items, sim, cos = ranking.similar_items(m, active, 10, max_cells=1 << 16)
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    cols = np.flatnonzero(active)
    # in float64, then rounded: a float32 product may give two equal columns values an ulp
    # apart (numpy 2.4's kernels do, by the column's place), which is no tie to sort by index
    wide = unit.astype(np.float64)
    full = (wide[items] @ wide[cols].T).astype(np.float32)
    full[np.arange(len(items)), np.searchsorted(cols, items)] = -np.inf
    ref = _reference_top_k(full, 10)
    assert np.array_equal(sim, cols[ref])
    np.testing.assert_allclose(cos, np.take_along_axis(full, ref, axis=1), rtol=1e-5, atol=1e-6)


def _torch_similar(m: np.ndarray, active: np.ndarray, k: int):
    """``similar_items`` by its PyTorch path alone (no kernel), for comparison."""
    return ranking.similar_items(m, active, k, kernel=False)


@pytest.mark.parametrize("threads", [1, 3])
def test_similar_items_kernel_and_pytorch_paths_agree(threads: int, caplog) -> None:
    """The kernel path (ONNX Runtime's product, the top-N kernel, small batches over
    several workers) gives the PyTorch path's lists: duplicated vectors (ties at every
    place, to the lower index), inactive items, a zero vector; never the item itself."""
    rng = np.random.default_rng(3)
    m = rng.standard_normal((4001, 16)).astype(np.float32)
    m[2000:2300] = m[10:310]  # exact ties
    m[77] = 0.0  # a zero vector: cosine 0 with everything
    active = rng.random(4001) > 0.2
    active[0] = False
    with caplog.at_level("WARNING", logger="nightrec.ranking"):
        got = ranking.similar_items(m, active, 12, max_cells=1 << 15, threads=threads)
    assert not caplog.records  # the kernel path ran
    want = _torch_similar(m, active, 12)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6, atol=1e-6)
    assert not (got[1] == got[0][:, None]).any()
    assert set(got[1].ravel()) <= set(np.flatnonzero(active))


def test_similar_items_without_numba_or_with_nan_vectors_still_answer(monkeypatch, caplog) -> None:
    """Without Numba (a stripped environment) the PyTorch path answers, with a warning. An
    item whose vector is NaN gets no similar items and is no one's (with a warning); the
    other lists are those of the catalog without it, on either path."""
    import sys

    import nightrec

    rng = np.random.default_rng(4)
    m = rng.standard_normal((900, 8)).astype(np.float32)
    active = np.ones(900, bool)
    active[0] = False
    want = _torch_similar(m, active, 5)
    with monkeypatch.context() as patch, caplog.at_level("WARNING", logger="nightrec.ranking"):
        patch.setitem(sys.modules, "nightrec.topk", None)  # import fails
        patch.delattr(nightrec, "topk", raising=False)
        got = ranking.similar_items(m, active, 5, threads=2)
    assert any("no Numba" in r.getMessage() for r in caplog.records)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want, strict=True))

    m[300] = np.nan
    without = active.copy()
    without[300] = False
    _, want_i, want_s = _torch_similar(m, without, 5)
    caplog.clear()
    with caplog.at_level("WARNING", logger="nightrec.ranking"):
        items, got_i, got_s = ranking.similar_items(m, active, 5, max_cells=1 << 14, threads=2)
    assert any(
        "1 active items have a vector that is not finite" in r.getMessage() for r in caplog.records
    )
    row = int(np.searchsorted(items, 300))
    assert (got_i[row] == -1).all() and np.isnan(got_s[row]).all()
    assert np.array_equal(np.delete(got_i, row, axis=0), want_i) and 300 not in got_i
    assert np.array_equal(np.delete(got_s, row, axis=0), want_s)


@pytest.mark.parametrize("kernel", [True, False])
def test_similar_items_log_their_progress(kernel: bool, monkeypatch, caplog) -> None:
    """A long similar-items pass (quadratic in the catalog) says how far it is: items done
    of all, rising, and a rate; the last batch is left to the step's own summary line."""
    import re

    monkeypatch.setattr(ranking, "PROGRESS_SECONDS", -1.0)  # every batch
    rng = np.random.default_rng(5)
    m = rng.standard_normal((1201, 8)).astype(np.float32)
    active = np.ones(1201, bool)
    active[0] = False
    with caplog.at_level("INFO", logger="nightrec.ranking"):
        ranking.similar_items(m, active, 5, max_cells=1 << 16, threads=2, kernel=kernel)
    lines = [r.getMessage() for r in caplog.records if "items/s" in r.getMessage()]
    pattern = re.compile(r"similar items: (\d+)/(\d+) items")
    done = [tuple(map(int, pattern.match(x).groups())) for x in lines]  # type: ignore[union-attr]
    # 1200 items, batches of 65536 // (1200 x workers) rows: several batches, all logged
    assert len(done) >= 3, lines
    assert all(total == 1200 for _, total in done)
    assert [d for d, _ in done] == sorted({d for d, _ in done}) and done[-1][0] < 1200


def test_rank_config_checks() -> None:
    with pytest.raises(ContractError):
        RankConfig(alpha=1.5)
    with pytest.raises(ContractError):
        RankConfig(category_cap=-1)


# ---------------------------------------------------------------- through the score step


def _scored(run1, tmp_path: Path, rank: RankConfig | None, name: str) -> pl.DataFrame:  # noqa: F811
    settings = isolated(run1, tmp_path / name)
    score.score(
        settings, run1["snapshot"], name, ScoreConfig(top_n=TOP_N, provider="cpu"), None, rank
    )
    folder = score.shard_dir(settings, name, 0, 1)
    return pl.read_parquet(sorted(folder.glob("part-*.parquet"))).sort("user_id", "rank")


def test_an_idle_layer_reproduces_todays_lists_exactly(run1, tmp_path: Path) -> None:  # noqa: F811
    plain = _scored(run1, tmp_path, None, "plain")
    # a cap no list reaches and alpha 1: the layer runs, and must change nothing
    idle = _scored(run1, tmp_path, RankConfig(category_cap=TOP_N), "idle")
    key = ["user_id", "rank", "item_id", "because_item_id"]
    assert idle.select(key).equals(plain.select(key))
    assert set(idle["reason"]) <= {"history", "similar_to_recent", "popular"}


def test_layer_in_the_score_step_diversifies_and_blends(run1, tmp_path: Path) -> None:  # noqa: F811
    plain = _scored(run1, tmp_path, None, "plain")
    capped = _scored(run1, tmp_path, RankConfig(category_cap=1), "capped")
    items = pl.read_parquet(run1["snapshot"] / "items.parquet", columns=["item_id", "category"])
    warm = capped.filter(pl.col("reason") != "popular").join(items, on="item_id")
    per = warm.group_by("user_id", "category").len()
    assert per["len"].max() == 1  # at most one item of a category in a list
    assert (
        not capped.filter(pl.col("reason") != "popular")
        .select(pl.struct("user_id", "item_id").is_duplicated().any())
        .item()
    )
    popular = _scored(run1, tmp_path, RankConfig(alpha=0.0), "popular")
    warm_pop = popular.filter(pl.col("reason") != "popular")
    assert (warm_pop["reason"] == "trending").mean() > 0.9
    assert not warm_pop.select("user_id", "item_id").equals(
        plain.filter(pl.col("reason") != "popular").select("user_id", "item_id")
    )


def test_similar_items_are_published(run1, tmp_path: Path) -> None:  # noqa: F811
    settings = isolated(run1, tmp_path)
    cfg = ScoreConfig(top_n=TOP_N, provider="cpu", similar_k=5)
    score.score(settings, run1["snapshot"], "runS", cfg)
    publish.publish(settings, "runS", AS_OF)
    sim = read_table(settings.serving / "serving.duckdb", "select * from similar_items")
    assert sim.height > 0
    assert sim.filter(pl.col("item_id") == pl.col("similar_item_id")).height == 0
    inactive = run1["inactive"]
    assert not set(sim["item_id"]) & inactive and not set(sim["similar_item_id"]) & inactive
    per = sim.group_by("item_id").agg(pl.col("rank").sort().alias("ranks"))
    assert all(r == list(range(1, 6)) for r in per["ranks"].to_list())
    assert set(sim["item_id"]) == run1["active"]  # every active item, cold ones included
    assert sim["run_id"].unique().to_list() == ["runS"]


def test_evaluation_judges_the_lists_as_served(run1) -> None:  # noqa: F811
    from nightrec import evaluate, splits, train
    from nightrec.config import EvalConfig, TrainConfig
    from nightrec.embed import load_embeddings

    snap = run1["snapshot"]
    catalog = train.load_catalog(snap)
    text = load_embeddings(snap)
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    split = splits.make_split(splits.load_interactions(snap, catalog), active, "loo", "test")
    cfg = TrainConfig(dim=16, epochs=2, seed=1)
    cand = evaluate.Candidate.fit(split, text, cfg)

    def figures(rank: RankConfig | None) -> dict:
        rows, _ = evaluate.evaluate_split(
            split, text, active, cfg, EvalConfig(), cand, rank, catalog
        )
        return {(r["model"], r["metric"], r["k"], r["slice"]): r["value"] for r in rows}

    plain = figures(None)
    # an idle layer (alpha 1, a cap no list reaches) is measured exactly like no layer
    assert figures(RankConfig(category_cap=1000)) == plain
    blended = figures(RankConfig(alpha=0.0))
    mine = (evaluate.CANDIDATE, "ndcg", 10, "all")
    assert blended[mine] != plain[mine]
    assert (
        blended[(evaluate.CANDIDATE, "coverage", 10, "all")]
        < plain[(evaluate.CANDIDATE, "coverage", 10, "all")]
    )  # popularity-ordered lists cover fewer items
    for key, value in plain.items():  # the baselines are not re-ranked
        if key[0] != evaluate.CANDIDATE:
            assert blended[key] == value
