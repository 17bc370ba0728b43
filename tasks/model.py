"""The text-aware encoder: item tower over pretrained text embeddings, user tower over history.

Item index 0 is padding; items 1..M are the catalog in item_id order.

    item_vec(i) = W · text_emb(i) + id_emb(i)                       [dim]
    user_vec(h) = last + MLP([last ; recency-weighted mean of h])   [dim]
    score(u, i) = user_vec(h_u) · item_vec(i)

The id part is dropped (whole rows, with probability ``id_dropout``) while training, so
that ``W · text_emb`` alone places an item; items that never occur in the training
examples have their id row zeroed (``forget_ids``): an item with text and no
interactions is ranked through its text.

The score can add item-to-item neighbours (``fusion``): a transition table read from
the user's last item and a co-occurrence table read from every history item, as a
sparse scatter-add onto the dense row; their weights are part of the buffers (zero:
the encoder alone).

``TopNScorer`` fuses user encoding, inner products with every item, the neighbour
terms, masking of seen and inactive items, top-N and the "because of" history item into
one graph, which is what gets exported to ONNX and run for every user.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nightrec.config import TrainConfig

NEG = float("-inf")
NEIGHBOUR_BUFFERS = ("next_idx", "next_w", "near_idx", "near_w")


class Encoder(nn.Module):
    text: torch.Tensor  # buffer: [M + 1, T] frozen text embeddings

    def __init__(self, text_emb: torch.Tensor, cfg: TrainConfig) -> None:
        """``text_emb``: [M + 1, T] frozen text embeddings, row 0 (padding) all zeros."""
        super().__init__()
        self.fit_info: dict = {}  # what training chose (epochs, validation NDCG), for the manifest
        n_items, text_dim = text_emb.shape
        self.register_buffer("text", text_emb.float(), persistent=True)
        self.proj = nn.Linear(text_dim, cfg.dim)
        self.item_id = nn.Embedding(n_items, cfg.dim, padding_idx=0)
        nn.init.normal_(self.item_id.weight, std=0.02)
        with torch.no_grad():
            self.item_id.weight[0].zero_()
        # an item read in a history adds its own id part: "what comes after i" need not be
        # "what is like i" (tied vectors cannot learn a -> b without also learning b -> a)
        self.next_id = nn.Embedding(n_items, cfg.dim, padding_idx=0)
        nn.init.zeros_(self.next_id.weight)
        self.recency = nn.Parameter(torch.linspace(-1.0, 0.0, cfg.max_history))  # [L]
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, cfg.dim)
        )
        # neighbour tables (``fusion``), weights already applied; one empty column: off
        for name in NEIGHBOUR_BUFFERS:
            dtype = torch.int64 if name.endswith("_idx") else torch.float32
            self.register_buffer(name, torch.zeros((n_items, 1), dtype=dtype), persistent=True)
        self.fused = False  # a plain flag, read when traced (a buffer's value cannot be)

    @classmethod
    def from_state(cls, state: dict, cfg: TrainConfig) -> Encoder:
        """An encoder from a saved ``state_dict`` (neighbour tables of any width)."""
        model = cls(state["text"], cfg)
        for name in NEIGHBOUR_BUFFERS:
            if name in state:
                setattr(model, name, state[name].clone())
        model.load_state_dict(state)
        model.fused = bool(model.next_w.any() or model.near_w.any())
        return model.eval()

    def set_neighbours(self, tables, a: float, b: float) -> None:
        """Use ``fusion.Tables`` with weights ``a`` (transitions) and ``b`` (co-occurrence)."""
        with torch.no_grad():
            self.next_idx = torch.from_numpy(tables.next_idx)
            self.next_w = torch.from_numpy(tables.next_w * np.float32(a))
            self.near_idx = torch.from_numpy(tables.near_idx)
            self.near_w = torch.from_numpy(tables.near_w * np.float32(b))
        self.fused = bool(self.next_w.any() or self.near_w.any())

    def add_neighbours(self, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, M + 1] plus the neighbour terms of ``history`` [B, L]."""
        if not self.fused:  # decided when traced: an unfused model exports no scatter
            return scores
        last = history[:, -1]
        idx = torch.cat([self.next_idx[last], self.near_idx[history].flatten(1)], dim=1)
        w = torch.cat([self.next_w[last], self.near_w[history].flatten(1)], dim=1)
        return scores.scatter_add(1, idx, w)  # padding rows add 0 to column 0

    def scores(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, M + 1] scores of every item (index 0 included) for ``history`` [B, L]."""
        return self.add_neighbours(history, self.user_vectors(history, items) @ items.T)

    def item_vectors(
        self, idx: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vectors of items ``idx`` (any shape) -> [..., dim]; all items when None.

        ``keep``: [M + 1] float, 1 where an item keeps its id part and 0 where it is
        dropped (training only; None keeps every id part).
        """
        ids = self.item_id.weight if keep is None else self.item_id.weight * keep.unsqueeze(1)
        if idx is None:
            return self.proj(self.text) + ids
        # embedding lookups, not ids[idx]: their CPU backward is deterministic
        return self.proj(self.text[idx]) + nn.functional.embedding(idx, ids)

    @torch.no_grad()
    def forget_ids(self, known: torch.Tensor) -> None:
        """Zero the id part of every item not in ``known`` ([M + 1] bool): text only."""
        self.item_id.weight[~known] = 0.0
        self.next_id.weight[~known] = 0.0

    def user_vectors(
        self,
        history: torch.Tensor,
        items: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """history: [B, L] item indices, most recent last, left-padded with 0 -> [B, dim].

        ``items``: [M + 1, dim] precomputed item vectors (None: computed for ``history``,
        with ``keep`` as in ``item_vectors``). A history item reads as its item vector
        plus its ``next_id`` part.
        """
        # an embedding lookup, not items[history]: its backward on CPU is deterministic, the
        # indexing one accumulates in thread order (training would not repeat bit for bit)
        hv = (
            self.item_vectors(history, keep)
            if items is None
            else nn.functional.embedding(history, items)
        ) + self.next_id(history)  # [B, L, dim]
        mask = history > 0  # [B, L]
        w = self.recency[-history.shape[1] :].expand_as(history).masked_fill(~mask, NEG)
        w = torch.softmax(w, dim=1).nan_to_num(0.0).unsqueeze(-1)  # [B, L, 1]
        pooled = (hv * w).sum(1)  # [B, dim]
        last = hv[:, -1]  # [B, dim]
        return last + self.user_mlp(torch.cat([last, pooled], dim=-1))

    def forward(self, history: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the next item over the whole catalog: [B, M + 1] (padding at -inf)."""
        items = self.item_vectors(keep=keep)
        logits = self.user_vectors(history, items) @ items.T
        return logits.index_fill(1, torch.tensor([0]), NEG)

    def sampled_logits(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        negatives: torch.Tensor,
        log_q: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the batch's targets plus shared uniform negatives, and target positions.

        For large catalogs: the cost of a step no longer grows with the number of items.
        The candidates are the batch's own targets (drawn in proportion to popularity) and
        uniform negatives, so popular items are candidates far more often than rare ones;
        ``log_q`` ([M + 1], log of each item's chance to be a candidate in a step) is
        subtracted from every candidate's logit (the log-q correction), which makes the
        sampled softmax an unbiased stand-in for the full one. Returns ([B, C], [B]).
        """
        cand = torch.unique(torch.cat([target, negatives]))  # sorted: [C]
        labels = torch.searchsorted(cand, target)
        users = self.user_vectors(history, keep=keep)
        return users @ self.item_vectors(cand, keep).T - log_q[cand], labels


class TopNScorer(nn.Module):
    """One fused scoring pass; the item matrix is frozen into the graph."""

    item_matrix: torch.Tensor  # buffer: [M + 1, dim]

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():
            self.register_buffer(
                "item_matrix", encoder.item_vectors().detach().clone()
            )  # [M+1, dim]

    def forward(
        self,
        history: torch.Tensor,  # [B, L] int64
        exclude: torch.Tensor,  # [B, E] int64, padded with 0
        item_bias: torch.Tensor,  # [M + 1] float32: 0, or -inf for inactive items and padding
        k_like: torch.Tensor,  # [K]: only its length is read, so K is chosen at run time
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = self.encoder.scores(history, self.item_matrix) + item_bias  # [B, M+1]
        scores = scores.scatter(1, exclude, NEG)
        top_scores, top_idx = torch.topk(scores, k_like.shape[0], dim=1)  # [B, K]
        # why: the history item most similar to each recommendation
        sim = self.item_matrix[top_idx] @ self.item_matrix[history].transpose(1, 2)  # [B, K, L]
        sim = sim.masked_fill((history == 0).unsqueeze(1), NEG)
        because = torch.gather(history, 1, sim.argmax(-1))  # [B, K]
        return top_scores, top_idx, because


def histories(seq: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """Right-aligned windows ``seq[max(s, e - length):e]`` per (s, e): [n, length], 0-padded."""
    idx = ends[:, None] - length + np.arange(length)[None, :]
    valid = idx >= starts[:, None]
    return np.where(valid, seq[np.clip(idx, 0, None)], 0).astype(np.int64)


def plan_batches(widths: np.ndarray, batch_size: int, max_cells: int) -> list[slice]:
    """Consecutive scoring batches whose padded exclude matrix stays under ``max_cells``.

    ``widths``: [n] seen items per user, in scoring order. ``padded_sets`` pads a batch to
    its widest user, so the matrix has ``len(batch) * max(width, 1)`` cells; batches of
    ``batch_size`` are split (greedily, keeping the order) where that exceeds ``max_cells``.
    A user wider than ``max_cells`` gets a batch of its own: its whole history must be
    excluded, so that is the floor. Results do not depend on the split (rows are scored
    independently). Returns slices into ``widths``.
    """
    n = len(widths)
    out: list[slice] = []
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        if (hi - lo) * max(int(widths[lo:hi].max()), 1) <= max_cells:
            out.append(slice(lo, hi))
            continue
        start, width = lo, 1
        for i in range(lo, hi):
            wider = max(width, int(widths[i]))
            if i > start and (i - start + 1) * wider > max_cells:
                out.append(slice(start, i))
                start, wider = i, max(int(widths[i]), 1)
            width = wider
        out.append(slice(start, hi))
    return out


def padded_sets(seq: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Left-aligned ``seq[s:e]`` for each (s, e), padded with 0 to the longest: [n, E]."""
    width = max(int((ends - starts).max(initial=0)), 1)
    idx = starts[:, None] + np.arange(width)[None, :]
    valid = idx < ends[:, None]
    return np.where(valid, seq[np.clip(idx, 0, len(seq) - 1)], 0).astype(np.int64)
