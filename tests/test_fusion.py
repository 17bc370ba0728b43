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
