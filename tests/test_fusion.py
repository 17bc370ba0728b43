"""Neighbour fusion: hand-counted tables, weights chosen on held-out examples only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nightrec import fusion
from nightrec.config import TrainConfig
from nightrec.model import Encoder


def test_tables_count_transitions_and_cosine_co_occurrence_by_hand() -> None:
    # examples (window -> target): [_, 1] -> 2, [1, 2] -> 3, [_, 3] -> 1; items 1..3
    hist = np.array([[0, 1], [1, 2], [0, 3]])
    target = np.array([2, 3, 1])
    t = fusion.tables(hist, target, 4, 2)
    # transitions from the window's last item: 1->2, 2->3, 3->1, once each
    assert t.next_idx.tolist() == [[0, 0], [2, 0], [3, 0], [1, 0]]
    # log(1 + 1) each, scaled so that the non-zero weights average 1
    assert np.allclose(t.next_w, [[0, 0], [1, 0], [1, 0], [1, 0]])
    # pairs (window item, target): {1,2}, {1,3}, {2,3}, {3,1}; symmetric counts
    # [1,3] = 2, [1,2] = [2,3] = 1; degrees 1: 3, 2: 2, 3: 3; cosine = count / sqrt(deg deg)
    third, sixth = 2 / 3, 1 / math.sqrt(6)
    assert t.near_idx.tolist() == [[0, 0], [3, 2], [1, 3], [1, 2]]  # ties by index
    want = np.array([[0, 0], [third, sixth], [sixth, sixth], [third, sixth]])
    assert np.allclose(t.near_w, want / want[want > 0].mean())


def test_tables_keep_the_strongest_width_neighbours() -> None:
    hist = np.array([[1], [1], [1], [1], [1], [1]])
    target = np.array([2, 2, 2, 3, 3, 4])
    t = fusion.tables(hist, target, 5, 2)
    assert t.next_idx[1].tolist() == [2, 3]  # 4 (once) is cut
    assert np.allclose(t.next_w[1], np.log1p([3, 2]) / np.log1p([3, 2]).mean())


def test_tables_cut_ties_at_the_width_by_item_index() -> None:
    # 4, 3 and 2 follow 1 twice each: the width keeps the lower indices, whatever the order
    hist = np.ones((6, 1), dtype=np.int64)
    t = fusion.tables(hist, np.array([4, 4, 3, 3, 2, 2]), 5, 2)
    assert t.next_idx[1].tolist() == [2, 3] and t.near_idx[1].tolist() == [2, 3]


def test_tables_match_a_full_sort_of_every_row() -> None:
    """Rows far wider than the width (many ties among small counts) keep exactly what
    sorting every row's entries by (weight desc, item) keeps."""
    rng = np.random.default_rng(5)
    n, width = 40, 4
    hist = rng.integers(0, n + 1, (3000, 3))
    target = rng.integers(1, n + 1, 3000)
    t = fusion.tables(hist, target, n + 1, width)
    last = hist[:, -1]
    counts: dict = {}
    for a, b in zip(last, target, strict=True):
        if a > 0:
            counts.setdefault(int(a), {}).setdefault(int(b), 0)
            counts[int(a)][int(b)] += 1
    for row in range(n + 1):
        entries = sorted(counts.get(row, {}).items(), key=lambda e: (-e[1], e[0]))[:width]
        want = [c for c, _ in entries] + [0] * (width - len(entries))
        assert t.next_idx[row].tolist() == want, row
    assert max(len(v) for v in counts.values()) > 5 * width  # the rows are wide


def _untrained(n_items: int, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    text = torch.randn(n_items + 1, 8)
    text[0] = 0.0
    return Encoder(text, TrainConfig(dim=8, max_history=3)).eval()


def test_choice_takes_transitions_where_they_predict_and_not_where_they_do_not() -> None:
    n, rng = 40, np.random.default_rng(3)
    model = _untrained(n)  # its own scores are noise
    last = rng.integers(1, n + 1, 2000)
    succ = np.arange(n + 1) % n + 1  # the planted next item: i -> i + 1
    hist = np.stack([np.zeros_like(last), np.zeros_like(last), last], axis=1)
    target = succ[last]
    train, held = slice(0, 1600), slice(1600, None)
    unit = fusion.tables(hist[train], target[train], n + 1, 5)
    a, b, ndcg = fusion.choose(
        model, torch.from_numpy(hist[held]), torch.from_numpy(target[held]), unit
    )
    assert a > 0 and ndcg[(a, b)] == pytest.approx(1.0)
    assert ndcg[(0.0, 0.0)] < 0.5
    # held-out targets unrelated to the training transitions: the encoder alone is kept
    noise = rng.integers(1, n + 1, 400)
    noise = np.where(noise == succ[last[held]], noise % n + 1, noise)
    a, b, ndcg = fusion.choose(model, torch.from_numpy(hist[held]), torch.from_numpy(noise), unit)
    assert ndcg[(a, b)] >= ndcg[(0.0, 0.0)]
    assert (a, b) == (0.0, 0.0) or ndcg[(a, b)] > ndcg[(0.0, 0.0)]


def test_cold_items_borrow_their_closest_known_item_by_text() -> None:
    # items 1..4; 4 has no interactions; its text is closest to 2 (cosine 0.8), then 1
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]])
    known = np.array([False, True, True, True, False])
    b = fusion.donors(text, known)
    assert b.cold.tolist() == [4] and b.donor.tolist() == [2]
    assert b.sim == pytest.approx([0.8])
    # 1 -> 2 twice, 1 -> 3 once: 4 enters row 1 as 2 does, at 0.8 of its count
    hist = np.array([[1], [1], [1]])
    target = np.array([2, 2, 3])
    plain = fusion.tables(hist, target, 5, 3)
    t = fusion.tables(hist, target, 5, 3, b)
    assert plain.next_idx[1].tolist() == [2, 3, 0]
    # in an extra column (width // 5, at least 1): it never takes a real neighbour's place
    assert t.next_idx[1].tolist() == [2, 3, 0, 4]
    real = np.log1p([2.0, 1.0])
    assert np.allclose(t.next_w[1], np.array([*real, 0.0, np.log1p(1.6)]) / real.mean())
    assert np.allclose(t.next_w[:, :3], plain.next_w)  # the real weights keep their scale
    # co-occurrence: 4 joins row 1 beside 2 with 0.8 of 2's cosine; it is never a row
    # itself (a cold item is in no history)
    col = t.near_idx[1].tolist()
    assert t.near_w[1][col.index(4)] == pytest.approx(0.8 * t.near_w[1][col.index(2)])
    assert not t.near_idx[4].any() and not t.next_idx[4].any()
    # nothing to borrow: the plain tables
    none = fusion.donors(text, np.ones(5, dtype=bool))
    assert len(none.cold) == 0
    same = fusion.tables(hist, target, 5, 3, none)
    assert np.array_equal(same.next_idx, plain.next_idx)
    assert np.array_equal(same.near_w, plain.near_w)


def test_a_cold_item_borrows_its_donors_id_part_scaled_by_the_cosine() -> None:
    model = _untrained(4)
    with torch.no_grad():
        model.item_id.weight[1:] = torch.randn(4, 8)
    known = torch.tensor([False, True, True, True, False])
    model.forget_ids(known)
    assert not model.item_id.weight[4].any()
    model.borrow_ids(fusion.Borrow(np.array([4]), np.array([2]), np.array([0.5], np.float32)))
    assert torch.allclose(model.item_id.weight[4], 0.5 * model.item_id.weight[2])
    assert not model.next_id.weight[4].any()  # never read in a history: nothing to borrow
    # scaled: min(1, scale x cosine) of it, never more than the donor's own
    model.borrow_ids(fusion.Borrow(np.array([4]), np.array([2]), np.array([0.5], np.float32)), 1.5)
    assert torch.allclose(model.item_id.weight[4], 0.75 * model.item_id.weight[2])
    model.borrow_ids(fusion.Borrow(np.array([4]), np.array([3]), np.array([0.8], np.float32)), 1.5)
    assert torch.allclose(model.item_id.weight[4], model.item_id.weight[3])


def _brute_force_ndcg(model, hist, target, unit, a: float, b: float) -> float:
    """Every item's fused score, the rank of the target counted directly (ties against it)."""
    with torch.no_grad():
        items = model.item_vectors()
        s = model.user_vectors(hist, items) @ items.T
    hn, n_items = hist.numpy(), unit.next_idx.shape[0]
    nxt = fusion.sparse_add(unit.next_idx[hn[:, -1]], unit.next_w[hn[:, -1]], n_items)
    flat = (len(hn), -1)
    near = fusion.sparse_add(
        unit.near_idx[hn].reshape(flat), unit.near_w[hn].reshape(flat), n_items
    )
    x = s + a * nxt + b * near
    x[:, 0] = -torch.inf
    x.scatter_(1, hist, -torch.inf)
    mine = x.gather(1, target[:, None])
    rank = (x >= mine).sum(1) - 1
    return float(torch.where(rank < 10, 1.0 / torch.log2(rank + 2.0), 0.0).mean())


def test_choice_ranks_exactly_as_scoring_every_item() -> None:
    n, rng = 300, np.random.default_rng(11)
    model = _untrained(n, seed=2)
    hist = rng.integers(0, n + 1, (700, 3))
    hist[:, -1] = rng.integers(1, n + 1, 700)
    target = rng.integers(1, n + 1, 700)
    unit = fusion.tables(hist[:500], target[:500], n + 1, 6)
    h, t = torch.from_numpy(hist[500:]), torch.from_numpy(target[500:])
    keep = ~(h == t[:, None]).any(1)  # a target is never in its own history
    h, t = h[keep], t[keep]
    grid = (0.0, 0.5, 3.0)
    _, _, ndcg = fusion.choose(model, h, t, unit, grid=grid, batch=64)
    for (a, b), got in ndcg.items():
        # one rank off moves the mean by >= 4e-5 here; float sums differ by ~1e-9
        assert got == pytest.approx(_brute_force_ndcg(model, h, t, unit, a, b), abs=1e-7)
    assert len(set(ndcg.values())) > 3  # the weights matter on this data
