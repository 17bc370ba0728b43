"""Rank every evaluated user's top-K over the whole catalog, and the baselines to beat.

A ranker gives a score for every item index ([B, M + 1]) to a batch of users (rows of
the split's training histories). ``rank`` applies production's masking (padding,
inactive items and the user's own training items never ranked), keeps the top K with
ties broken by item index (= ``item_id`` order), and gives users without training
items the popularity list, as scoring does.

Baselines, fitted on the split's training part only:

- ``Popular``: distinct users per item in the last ``window_days`` before the split's
  latest training interaction (like ``sql/popular_items.sql``, on ``first_ts``).
- ``ItemKNN``: cosine similarity of items over user co-occurrence, the
  ``neighbors`` most similar kept per item; a user's score for j is the sum of the
  similarities of j to the user's items.
- ``Transition``: how often j came right after the user's last item in training
  histories.

kNN and transition scores back off to popularity: among equal scores (zero included),
the more popular item ranks first.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from nightrec.splits import US_PER_DAY, Split
from nightrec.train import Sequences

NEG = -np.inf
KNN_MAX_HISTORY = 200  # a user's most recent items that count for co-occurrence (bounds X'X)


class Ranker(Protocol):
    name: str

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """[B] rows of ``split.train`` -> [B, M + 1] scores (higher is better)."""
        ...


def popularity(split: Split, n_index: int, window_days: int) -> np.ndarray:
    """[M + 1] distinct training users per item within the window (pairs are unique)."""
    seq, t = split.train.seq, split.train_t
    if len(seq) == 0:
        return np.zeros(n_index)
    recent = t >= t.max() - window_days * US_PER_DAY
    return np.bincount(seq[recent], minlength=n_index).astype(np.float64)


def backoff(pop: np.ndarray) -> np.ndarray:
    """Popularity squeezed into [0, 1): added to integer scores it only breaks their ties."""
    return pop / (pop.max(initial=0.0) + 1.0)


def user_item_matrix(seqs: Sequences, n_index: int, max_history: int | None = None):
    """Binary CSR [users, M + 1] of training histories (each user's last ``max_history``)."""
    from scipy import sparse

    lengths = seqs.ends - seqs.starts
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = seqs.seq
    if max_history is not None:
        from_end = np.repeat(seqs.ends, lengths) - np.arange(len(cols))  # 1 = the last item
        rows, cols = rows[from_end <= max_history], cols[from_end <= max_history]
    data = np.ones(len(cols), dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(lengths), n_index))


def top_per_row(m, n: int):
    """Keep the ``n`` largest entries of each CSR row (ties by column)."""
    from scipy import sparse

    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= n:
        return m
    rows = np.repeat(np.arange(m.shape[0]), counts)
    order = np.lexsort((m.indices, -m.data, rows))  # rows stay in place, sorted within
    rank = np.arange(len(order)) - np.repeat(m.indptr[:-1], counts)
    keep = order[rank < n]
    return sparse.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)


class Popular:
    name = "popular"

    def __init__(self, pop: np.ndarray) -> None:
        self.pop = pop

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return np.tile(self.pop, (len(rows), 1))


class ItemKNN:
    name = "item_knn"

    def __init__(self, split: Split, pop: np.ndarray, neighbors: int) -> None:
        from scipy import sparse

        n_index = len(pop)
        self.x = user_item_matrix(split.train, n_index, KNN_MAX_HISTORY)
        counts = np.asarray(self.x.sum(axis=0)).ravel()  # [M + 1] users per item
        co = (self.x.T @ self.x).tocoo()  # [M + 1, M + 1] co-occurrence counts
        off = co.row != co.col  # an item is not its own neighbour
        r, c = co.row[off], co.col[off]
        cosine = co.data[off] / np.sqrt(counts[r] * counts[c])
        self.sim = top_per_row(sparse.csr_matrix((cosine, (r, c)), shape=co.shape), neighbors)
        # cosine sums of distinct items differ by far more than 1e-9: this only breaks ties
        self.tie = backoff(pop) * 1e-9

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return (self.x[rows] @ self.sim).toarray() + self.tie


class Transition:
    name = "transition"

    def __init__(self, split: Split, pop: np.ndarray) -> None:
        from scipy import sparse

        seqs, n_index = split.train, len(pop)
        nxt = np.ones(len(seqs.seq), dtype=bool)
        nxt[seqs.ends - 1] = False  # a user's last item has no successor
        a = np.flatnonzero(nxt)
        ones = np.ones(len(a), dtype=np.float64)
        self.counts = sparse.csr_matrix(
            (ones, (seqs.seq[a], seqs.seq[a + 1])), shape=(n_index, n_index)
        )  # duplicates are summed: [M + 1, M + 1] next-item counts
        self.last = seqs.seq[seqs.ends - 1]  # [users] each user's last training item
        self.tie = backoff(pop)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.counts[self.last[rows]].toarray() + self.tie


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` highest scores per row, best first, ties by lower column.

    ``scores``: [B, N]. Returns [B, k] int64, -1 where fewer than ``k`` scores are finite.
    Exact on ties without sorting whole rows: everything above the k-th value, then the
    leftmost of those equal to it.
    """
    b, n = scores.shape
    k = min(k, n)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # [B, 1]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need))
    cols = np.nonzero(take)[1].reshape(b, k)  # row-major: exactly k per row
    vals = np.take_along_axis(scores, cols, axis=1)
    order = np.lexsort((cols, -vals), axis=1)  # score descending, column ascending
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    return np.where(np.isfinite(vals), cols, -1).astype(np.int64)


def mask_seen(s: np.ndarray, seqs: Sequences, rows: np.ndarray) -> np.ndarray:
    """``s`` [B, M + 1] with each row's own training items (``seqs`` rows ``rows``) at -inf."""
    lengths = seqs.ends[rows] - seqs.starts[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    pos = np.repeat(seqs.starts[rows] - np.cumsum(lengths) + lengths, lengths) + np.arange(
        lengths.sum()
    )
    s[owner, seqs.seq[pos]] = NEG
    return s


def rank(
    ranker: Ranker,
    split: Split,
    bias: np.ndarray,
    pop: np.ndarray,
    k: int,
    batch_users: int = 512,
) -> np.ndarray:
    """Top ``k`` item indices of every evaluated user of ``split``: [n, k], -1 padded.

    Args:
        ranker: scores users with training items.
        split: the evaluated users, their training histories (excluded) and targets.
        bias: [M + 1] 0 for rankable items, -inf for padding and inactive items.
        pop: [M + 1] popularity: the list of users without training items.
        k: list length.
        batch_users: users per ``ranker.scores`` call; memory is batch x (M + 1).
    """
    n = len(split.users)
    out = np.full((n, k), -1, dtype=np.int64)
    seqs = split.train
    warm = np.flatnonzero(split.row >= 0)
    for lo in range(0, len(warm), batch_users):
        sel = warm[lo : lo + batch_users]
        rows = split.row[sel]
        s = mask_seen(ranker.scores(rows) + bias, seqs, rows)  # [B, M + 1]
        out[sel, : min(k, s.shape[1])] = top_k(s, k)
    cold = np.flatnonzero(split.row < 0)
    if len(cold):
        out[cold, : min(k, len(pop))] = top_k((pop + bias)[None, :], k)[0]
    return out
