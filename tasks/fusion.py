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
class Borrow:
    """Items without training interactions (cold) and the known item each borrows from."""

    cold: np.ndarray  # [C] model indices of cold items
    donor: np.ndarray  # [C] model index of the known item whose text is closest
    sim: np.ndarray  # [C] float32 that text cosine, clipped to [0, 1]: the borrowed share


def donors(text: np.ndarray, known: np.ndarray, batch: int = 2048) -> Borrow:
    """Each cold item's closest known item by text cosine (ties: the lower index).

    ``text``: [M, T] embeddings of items 1..M; ``known``: [M + 1] bool (index 0 padding).
    A cold item has no collaborative signal of its own; the known item whose text is
    most like it stands in for it, in proportion to how alike the two texts are.
    """
    cold = np.flatnonzero(~known[1:]) + 1
    have = np.flatnonzero(known[1:]) + 1
    donor = np.zeros(len(cold), dtype=np.int64)
    sim = np.zeros(len(cold), dtype=np.float32)
    if len(cold) == 0 or len(have) == 0:
        return Borrow(cold[:0], donor[:0], sim[:0])
    unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    pool = unit[have - 1].T  # [T, K]
    for lo in range(0, len(cold), batch):
        cos = unit[cold[lo : lo + batch] - 1] @ pool  # [B, K]
        best = cos.argmax(1)
        donor[lo : lo + batch] = have[best]
        sim[lo : lo + batch] = np.clip(cos[np.arange(len(best)), best], 0.0, 1.0)
    return Borrow(cold, donor, sim)


def _borrowed(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, borrow: Borrow | None):
    """For every pair (h, d) with d a donor, (h, c, sim · value) for each cold item c
    borrowing from d: c gets d's neighbours in proportion to their text cosine."""
    if borrow is None or len(borrow.cold) == 0 or len(rows) == 0:
        return rows[:0], cols[:0], vals[:0]
    order = np.argsort(borrow.donor, kind="stable")
    by_donor = borrow.donor[order]
    lo = np.searchsorted(by_donor, cols, "left")
    n = np.searchsorted(by_donor, cols, "right") - lo  # [P] cold items borrowing from col
    pair = np.repeat(np.arange(len(rows)), n)
    slot = order[np.repeat(lo, n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)]
    return rows[pair], borrow.cold[slot], vals[pair] * borrow.sim[slot]


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
    data, cols = m.data, m.indices
    # a row with more than ``width`` entries keeps those at least its width-th largest
    # (ties included, so the order below cuts them by col as over the whole row): the sort
    # then takes ~width entries a row, not all of them (at 1M users, 19M -> 2.5M)
    heavy = np.flatnonzero(counts > width)
    if len(heavy):
        floor = np.zeros(n_items, dtype=data.dtype)
        for i in heavy:
            row = data[m.indptr[i] : m.indptr[i + 1]]
            floor[i] = np.partition(row, len(row) - width)[len(row) - width]
        kept = data >= floor[r]
        r, data, cols = r[kept], data[kept], cols[kept]
        counts = np.bincount(r, minlength=n_items)
    order = np.lexsort((cols, -data, r))  # rows in place, strongest first, then by col
    rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = order[rank < width]
    slot = rank[rank < width]
    idx[r[keep], slot] = cols[keep]
    w[r[keep], slot] = data[keep]
    return idx, w


def tables(
    hist: np.ndarray, target: np.ndarray, n_items: int, width: int, borrow: Borrow | None = None
) -> Tables:
    """Neighbour tables with unit weights from examples ``hist`` [n, L], ``target`` [n].

    ``borrow``: cold items enter the tables through their donors (``donors``), in
    ``width // 5`` extra columns per row: they never take a real neighbour's place.
    """
    extra = max(1, width // 5) if borrow is not None and len(borrow.cold) else 0
    last = hist[:, -1]
    has = last > 0
    nxt = (last[has], target[has], np.ones(int(has.sum()), np.float64))
    owner, col = np.nonzero(hist)
    a, b = hist[owner, col], target[owner]
    diff = a != b
    a, b = a[diff], b[diff]
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])  # symmetric co-occurrence
    deg = np.bincount(rows, minlength=n_items).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = 1.0 / np.sqrt(deg[rows] * deg[cols])  # each pair's share of the cosine
    out = []
    for (r, c, v), squash in ((nxt, np.log1p), ((rows, cols, vals), np.asarray)):
        idx, w = _top(r, c, v, n_items, width)
        scale = _unit_scale(squash(w))  # of the real neighbours: borrowed ones keep it
        if extra:
            br, bc, bv = _borrowed(r, c, v, borrow)
            more_idx, more_w = _top(br, bc, bv, n_items, extra)
            idx, w = np.hstack([idx, more_idx]), np.hstack([w, more_w])
        out.append((idx, (squash(w) / scale).astype(np.float32)))
    (nxt_idx, nxt_w), (near_idx, near_w) = out
    return Tables(nxt_idx, nxt_w, near_idx, near_w)


def _unit_scale(w: np.ndarray) -> np.float32:
    """The mean of ``w``'s non-zero entries (1 if none): dividing by it makes them average
    1, so one grid fits every data set (cosines of a large catalog are far smaller than
    those of a small one)."""
    nz = w[w != 0]
    return np.float32(nz.mean()) if len(nz) else np.float32(1.0)


def sparse_add(idx: np.ndarray, w: np.ndarray, n_items: int):
    """Dense [B, n_items] rows from per-row (idx [B, F], w [B, F]) terms, duplicates summed."""
    import torch

    out = torch.zeros((idx.shape[0], n_items), dtype=torch.float32)
    return out.scatter_add_(1, torch.as_tensor(idx), torch.as_tensor(w))


def choose(
    model,
    hist,
    target,
    unit: Tables,
    strength=None,
    grid: tuple[float, ...] = GRID,
    batch: int = 512,
) -> tuple[float, float, dict[tuple[float, float], float]]:
    """(a, b) with the best NDCG@10 of ``target`` [n] after ``hist`` [n, L] (tensors;
    ``strength``: [n, L] codes beside ``hist``, or None).

    Ranked over every item, the history's items excluded, ties counted against the
    target (as ``train.validation_ndcg``). Returns the weights and every pair's NDCG@10.

    Fast and exact: only the few items a row's neighbour terms touch (``F`` <= width ·
    (1 + L)) change score between weight pairs. A pair's rank of the target is the
    number of items whose plain score reaches the target's fused score (``_reaching``:
    one pass over the row for every pair at once), corrected on those ``F`` items: O(F)
    per pair, not O(M).
    """
    import torch

    combos = [(a, b) for a in grid for b in grid]
    a_all = torch.tensor([[a for a, _ in combos]], dtype=torch.float32)  # [1, P]
    b_all = torch.tensor([[b for _, b in combos]], dtype=torch.float32)
    total = torch.zeros(len(combos), dtype=torch.float64)
    n_items = unit.next_idx.shape[0]
    with torch.inference_mode():
        items = model.item_vectors()
        for lo in range(0, len(target), batch):
            h, t = hist[lo : lo + batch], target[lo : lo + batch]
            hn = h.numpy()
            c = None if strength is None else strength[lo : lo + batch]
            s = model.user_vectors(h, items, strength=c) @ items.T  # [B, M + 1]
            s[:, 0] = -torch.inf
            s.scatter_(1, h, -torch.inf)  # seen items never ranked
            nxt = sparse_add(unit.next_idx[hn[:, -1]], unit.next_w[hn[:, -1]], n_items)
            flat = (len(hn), -1)
            near = sparse_add(
                unit.near_idx[hn].reshape(flat), unit.near_w[hn].reshape(flat), n_items
            )
            # the items with a neighbour term, once each: [B, F]
            touched = torch.from_numpy(
                np.concatenate([unit.next_idx[hn[:, -1]], unit.near_idx[hn].reshape(flat)], 1)
            )
            touched, _ = touched.sort(1)
            first = torch.ones_like(touched, dtype=torch.bool)
            first[:, 1:] = touched[:, 1:] != touched[:, :-1]
            s_f, n_f, c_f = s.gather(1, touched), nxt.gather(1, touched), near.gather(1, touched)
            real = first & (touched > 0) & (s_f > -torch.inf)
            s_t, n_t, c_t = (x.gather(1, t[:, None]) for x in (s, nxt, near))  # [B, 1]
            mines = s_t + a_all * n_t + b_all * c_t  # every pair's fused target score, [B, P]
            plain = _reaching(s, mines)  # [B, P] items whose plain score reaches each
            for i, (a, b) in enumerate(combos):
                mine = mines[:, i : i + 1]  # the target's fused score, [B, 1]
                # items reaching it: by plain score, then the touched ones by fused score
                reach = plain[:, i].clone()
                reach -= ((s_f >= mine) & real).sum(1)
                reach += ((s_f + a * n_f + b * c_f >= mine) & real).sum(1)
                rank = reach - 1  # the target reaches itself
                total[i] += float(torch.where(rank < 10, 1.0 / torch.log2(rank + 2.0), 0.0).sum())
    ndcg = {c: float(v) / max(len(target), 1) for c, v in zip(combos, total, strict=True)}
    # the best; among equals the lightest fusion (the encoder alone first)
    best = min(combos, key=lambda c: (-round(ndcg[c], 9), c[0] + c[1], c))
    return best[0], best[1], ndcg


def _reaching(scores, thresholds):
    """[B, P] count of each row's ``scores`` [B, M] that are >= each of its ``thresholds``
    [B, P] (float32 tensors), exactly: every score is placed among the row's sorted
    thresholds by a binary search (log P steps, not a sort of the M scores), and the
    counts of the places summed from the top."""
    import torch

    b, p = thresholds.shape
    ordered, order = thresholds.sort(1)  # [B, P] ascending
    # place of a score: how many thresholds it reaches (>= each of them)
    place = torch.searchsorted(ordered, scores, right=True)  # [B, M] in 0..P
    rows = torch.arange(b).unsqueeze(1) * (p + 1)
    counts = torch.bincount((place + rows).flatten(), minlength=b * (p + 1)).reshape(b, p + 1)
    # the j-th smallest threshold is reached by every score placed above j
    above = counts.flip(1).cumsum(1).flip(1)[:, 1:]  # [B, P]
    return torch.empty_like(above).scatter_(1, order, above)
