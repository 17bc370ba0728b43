"""Ranking metrics of top-K lists against one held-out target per user.

Lists are [n, K] item indices, best first, -1 where a list is shorter. With one target
per user, HR@K (hit rate) equals Recall@K; per user:

    HR@K        1 if the target is in the top K
    NDCG@K      1 / log2(rank + 1) if hit (the ideal DCG of one target is 1)
    MRR@K       1 / rank if hit (reciprocal rank, cut at K)
    precision@K hit / K
    F1@K        2 P R / (P + R) = 2 / (K + 1) if hit

    diversity@K mean pairwise cosine distance 1 - cos(a, b) of the text vectors of
                the top K (intra-list diversity; lists of 2+ items)
    novelty@K   mean of -log2 p(i) over the top K, p(i) = (training users of i + 1) /
                (training users + 1): popular items carry little information

each averaged over users, and over the lists of a group of users as a whole:

    coverage@K  distinct items in all their top-K lists / rankable (active) items
"""

from __future__ import annotations

import numpy as np

NAMES = ("hr", "ndcg", "mrr", "precision", "f1", "coverage", "diversity", "novelty")
CHUNK = 256  # users per block in diversity: the gathered vectors are CHUNK x K x dim


def target_ranks(lists: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[n] 1-based rank of each user's target in its list; 0 when absent."""
    hit = lists == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


def _hits(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks > 0) & (ranks <= k)


# per-user values from target ranks ([n] int, 0 = not in the list): [n] float64 each
def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    return _hits(ranks, k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(_hits(ranks, k), 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)


def mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(_hits(ranks, k), 1.0 / np.maximum(ranks, 1), 0.0)


def precision(ranks: np.ndarray, k: int) -> np.ndarray:
    return _hits(ranks, k) / k


def f1(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(_hits(ranks, k), 2.0 / (k + 1), 0.0)


def coverage(lists: np.ndarray, k: int, n_rankable: int) -> float:
    top = lists[:, :k]
    return len(np.unique(top[top >= 0])) / max(n_rankable, 1)


def diversity(lists: np.ndarray, ks: tuple[int, ...], vectors: np.ndarray) -> dict[int, np.ndarray]:
    """Per user and K: mean pairwise cosine distance within the top K; NaN under 2 items.

    ``vectors``: [M + 1, dim] L2-normalised rows; row 0 (padding, where a list is
    short) must be zero. Without K x K matrices: the sum over pairs a != b of v_a . v_b is
    |sum v|^2 - sum |v|^2; the sums of the shorter lists are carried to the longer.
    Returns {k: [n] float64}.
    """
    n_users, width = lists.shape
    out = {k: np.full(n_users, np.nan) for k in ks}
    for lo in range(0, n_users, CHUNK):
        top = lists[lo : lo + CHUNK]
        valid = top >= 0
        v = np.take(vectors, np.maximum(top, 0), axis=0)  # [c, K, dim]; row 0 is zero
        self_sim = np.cumsum(np.einsum("ckd,ckd->ck", v, v), axis=1)  # [c, K]
        count = np.cumsum(valid, axis=1)  # [c, K]
        total, done = np.zeros((len(top), v.shape[2]), np.float32), 0  # sum of the first K
        for k in sorted(ks):
            j = min(k, width)
            total += v[:, done:j].sum(axis=1)
            done = j
            pairs = count[:, j - 1] * (count[:, j - 1] - 1.0)
            cross = np.einsum("cd,cd->c", total, total) - self_sim[:, j - 1]
            out[k][lo : lo + CHUNK] = np.where(
                pairs > 0, 1.0 - cross / np.maximum(pairs, 1), np.nan
            )
    return out


def novelty(lists: np.ndarray, k: int, item_users: np.ndarray, n_users: int) -> np.ndarray:
    """Per user: mean self-information (bits) of its top K; ``item_users``: [M + 1]."""
    top = lists[:, :k]
    valid = top >= 0
    info = -np.log2((item_users[np.maximum(top, 0)] + 1.0) / (n_users + 1.0)) * valid
    count = valid.sum(axis=1)
    return np.where(count > 0, info.sum(axis=1) / np.maximum(count, 1), np.nan)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def compute(
    lists: np.ndarray,
    targets: np.ndarray,
    ks: tuple[int, ...],
    vectors: np.ndarray,
    item_users: np.ndarray,
    n_users: int,
    n_rankable: int,
    slices: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[tuple[str, int], float]]:
    """Every metric of ``NAMES`` at every K, per slice: {slice: {(metric, k): value}}.

    Args:
        lists: [n, >= max(ks)] item indices, best first, -1 padded.
        targets: [n] each user's target item index.
        ks: cut-offs.
        vectors: [M + 1, dim] normalised item text vectors (``normalise``).
        item_users: [M + 1] training users of each item (novelty).
        n_users: training users (novelty).
        n_rankable: active items (the coverage denominator).
        slices: {name: [n] bool} groups of users; None: one slice ``all``. Empty
            slices are left out.
    """
    slices = {"all": np.ones(len(targets), dtype=bool)} if slices is None else slices
    ranks = target_ranks(lists, targets)
    per_user: dict[tuple[str, int], np.ndarray] = {}
    for k in ks:
        per_user["hr", k] = hit_rate(ranks, k)
        per_user["ndcg", k] = ndcg(ranks, k)
        per_user["mrr", k] = mrr(ranks, k)
        per_user["precision", k] = precision(ranks, k)
        per_user["f1", k] = f1(ranks, k)
        per_user["novelty", k] = novelty(lists, k, item_users, n_users)
    for k, values in diversity(lists, ks, vectors).items():
        per_user["diversity", k] = values
    out: dict[str, dict[tuple[str, int], float]] = {}
    for name, mask in slices.items():
        if not mask.any():
            continue
        figures = {key: _nanmean(values[mask]) for key, values in per_user.items()}
        for k in ks:
            figures["coverage", k] = coverage(lists[mask], k, n_rankable)
        out[name] = {(m, k): figures[m, k] for m in NAMES for k in ks}
    return out


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")
