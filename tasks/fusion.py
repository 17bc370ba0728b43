"""Fuse the encoder's scores with item-to-item neighbours, weights chosen on validation.

    score(u, j) = encoder(u, j)
                + a · log(1 + next(last_u, j))            transitions: how often j came
                                                           right after u's last item
                + b · Σ_{h in u's window} near(h, j)      co-occurrence: cosine of h and j
                                                           within one history window

Both neighbour tables are counted from the training examples (history window, target)
alone: ``next`` from (the window's last item, target) pairs, ``near`` from (every window
item, target) pairs made symmetric and normalised by each item's pair count (cosine).
Each kind is scaled so that its non-zero weights average 1, and each item keeps its
``width`` strongest neighbours, so a user adds at most
``width · (1 + L)`` sparse terms to the encoder's dense row (a scatter-add in the ONNX
graph, next to the inner products with every item).

``a`` and ``b`` are chosen every time the model is fitted, on the examples held out to
choose the epoch (``train.holdout``): the tables used for the choice are counted without
those examples (no held-out target is its own neighbour), then the model keeps tables
counted from every example with the chosen weights. ``(0, 0)`` (the encoder alone) is a
candidate and wins ties, so fusion is used only where the held-out NDCG@10 shows a gain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass
class Tables:
    """[M + 1, width] neighbour indices (0 = none) and unit weights, per kind."""

    next_idx: np.ndarray
    next_w: np.ndarray
    near_idx: np.ndarray
    near_w: np.ndarray


def _top(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_items: int, width: int):
    """Sum duplicate (row, col) pairs, keep each row's ``width`` largest (ties by col).

    Returns dense ([n_items, width] int64 cols, 0 where none; [n_items, width] float32).
    """
    from scipy import sparse

    idx = np.zeros((n_items, width), dtype=np.int64)
    w = np.zeros((n_items, width), dtype=np.float32)
    if len(rows) == 0:
        return idx, w
    m = sparse.coo_matrix((vals, (rows, cols)), shape=(n_items, n_items)).tocsr()
    m.sum_duplicates()
    counts = np.diff(m.indptr)
    r = np.repeat(np.arange(n_items), counts)
    order = np.lexsort((m.indices, -m.data, r))  # rows in place, strongest first, then by col
    rank = np.arange(len(order)) - np.repeat(m.indptr[:-1], counts)
    keep = order[rank < width]
    slot = rank[rank < width]
    idx[r[keep], slot] = m.indices[keep]
    w[r[keep], slot] = m.data[keep]
    return idx, w


def tables(hist: np.ndarray, target: np.ndarray, n_items: int, width: int) -> Tables:
    """Neighbour tables with unit weights from examples ``hist`` [n, L], ``target`` [n]."""
    last = hist[:, -1]
    has = last > 0
    nxt_idx, nxt_w = _top(
        last[has], target[has], np.ones(int(has.sum()), np.float64), n_items, width
    )
    nxt_w = np.log1p(nxt_w)
    owner, col = np.nonzero(hist)
    a, b = hist[owner, col], target[owner]
    diff = a != b
    a, b = a[diff], b[diff]
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])  # symmetric co-occurrence
    deg = np.bincount(rows, minlength=n_items).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = 1.0 / np.sqrt(deg[rows] * deg[cols])  # each pair's share of the cosine
    near_idx, near_w = _top(rows, cols, vals, n_items, width)
    return Tables(nxt_idx, _unit_mean(nxt_w), near_idx, _unit_mean(near_w))


def _unit_mean(w: np.ndarray) -> np.ndarray:
    """``w`` scaled so that its non-zero entries average 1: one grid fits every data set
    (cosines of a large catalog are far smaller than those of a small one)."""
    nz = w[w != 0]
    return w / np.float32(nz.mean()) if len(nz) else w


def sparse_add(idx: np.ndarray, w: np.ndarray, n_items: int):
    """Dense [B, n_items] rows from per-row (idx [B, F], w [B, F]) terms, duplicates summed."""
    import torch

    out = torch.zeros((idx.shape[0], n_items), dtype=torch.float32)
    return out.scatter_add_(1, torch.as_tensor(idx), torch.as_tensor(w))


def choose(
    model, hist, target, unit: Tables, grid: tuple[float, ...] = GRID, batch: int = 512
) -> tuple[float, float, dict[tuple[float, float], float]]:
    """(a, b) with the best NDCG@10 of ``target`` [n] after ``hist`` [n, L] (tensors).

    Ranked over every item, the history's items excluded, ties counted against the
    target (as ``train.validation_ndcg``). Returns the weights and every pair's NDCG@10.
    """
    import torch

    combos = [(a, b) for a in grid for b in grid]
    total = torch.zeros(len(combos), dtype=torch.float64)
    n_items = unit.next_idx.shape[0]
    with torch.inference_mode():
        items = model.item_vectors()
        for lo in range(0, len(target), batch):
            h, t = hist[lo : lo + batch], target[lo : lo + batch]
            hn = h.numpy()
            s = model.user_vectors(h, items) @ items.T  # [B, M + 1]
            nxt = sparse_add(unit.next_idx[hn[:, -1]], unit.next_w[hn[:, -1]], n_items)
            flat = (len(hn), -1)
            near = sparse_add(
                unit.near_idx[hn].reshape(flat), unit.near_w[hn].reshape(flat), n_items
            )
            seen = torch.zeros_like(s, dtype=torch.bool)
            seen[:, 0] = True
            seen.scatter_(1, h, True)
            for i, (a, b) in enumerate(combos):
                x = (s + a * nxt + b * near).masked_fill_(seen, -torch.inf)
                mine = x.gather(1, t[:, None])
                rank = (x > mine).sum(1) + (x == mine).sum(1) - 1
                total[i] += float(torch.where(rank < 10, 1.0 / torch.log2(rank + 2.0), 0.0).sum())
    ndcg = {c: float(v) / max(len(target), 1) for c, v in zip(combos, total, strict=True)}
    # the best; among equals the lightest fusion (the encoder alone first)
    best = min(combos, key=lambda c: (-round(ndcg[c], 9), c[0] + c[1], c))
    return best[0], best[1], ndcg
