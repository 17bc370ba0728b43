"""The text-aware encoder: item tower over pretrained text embeddings, user tower over history.

Item index 0 is padding; items 1..M are the catalog in item_id order.

    item_vec(i) = W · text_emb(i) + id_emb(i)                       [dim]
    user_vec(h) = last + MLP([last ; recency-weighted mean of h])   [dim]
    score(u, i) = user_vec(h_u) · item_vec(i)

A history item also reads what the user did with it when it entered the history (its
``strength``: view, click, cart, purchase or a rating, ``STRENGTH_CODES``) as a learned
vector added to its history vector; a data set whose events all carry one strength gets
no such vector (``strength_map`` sends every code to 0, the zero row).

The id part is dropped (whole rows, with probability ``id_dropout``) while training, so
that ``W · text_emb`` alone places an item; items that never occur in the training
examples have their id row zeroed (``forget_ids``): an item with text and no
interactions is ranked through its text.

The score can add item-to-item neighbours (``fusion``): a transition table read from
the user's last item and a co-occurrence table read from every history item, as a
sparse scatter-add onto the dense row; their weights are part of the buffers (zero:
the encoder alone).

A served model may be a pair (``twin``): the refit and the model that chose the epoch,
two members trained from different seeds. Its item vector is both members' side by side
[2 · dim], its user vector both members' halved, so that the score is the mean of the
two members' scores (the neighbour terms added once, by the first member's tables).

``TopNScorer`` fuses user encoding, inner products with every item, the neighbour
terms, masking of seen and inactive items, top-N and the "because of" history item into
one graph, which is what gets exported to ONNX and run for every user.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from nightrec.config import TrainConfig

NEG = float("-inf")
NEIGHBOUR_BUFFERS = ("next_idx", "next_w", "near_idx", "near_w")
# the snapshot's ``first_strength`` (sql/snapshot_interactions.sql): 0 none (padding, or
# unknown), 1 view, 2 click, 3 add_to_cart, 4 purchase, 5..9 a rating of 1..5, 10 a rating
# without a value
STRENGTH_CODES = 11


class Encoder(nn.Module):
    text: torch.Tensor  # buffer: [M + 1, T] frozen text embeddings
    strength_map: torch.Tensor  # buffer: [STRENGTH_CODES] code read -> row of ``strength``

    def __init__(self, text_emb: torch.Tensor, cfg: TrainConfig) -> None:
        """``text_emb``: [M + 1, T] frozen text embeddings, row 0 (padding) all zeros."""
        super().__init__()
        self.cfg = cfg
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
        # dropout on the history's item vectors while training (identity when exported)
        self.drop = nn.Dropout(cfg.dropout)
        # "attention": causal self-attention over the window instead of the pooled mean
        self.blocks = nn.ModuleList(
            [Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers)]
            if cfg.user_encoder == "attention"
            else []
        )
        if self.blocks:
            self.position = nn.Parameter(torch.zeros(cfg.max_history, cfg.dim))  # [L, dim]
            nn.init.normal_(self.position, std=0.02)
            self.final_norm = nn.LayerNorm(cfg.dim)
        # neighbour tables (``fusion``), weights already applied; one empty column: off
        for name in NEIGHBOUR_BUFFERS:
            dtype = torch.int64 if name.endswith("_idx") else torch.float32
            self.register_buffer(name, torch.zeros((n_items, 1), dtype=dtype), persistent=True)
        self.fused = False  # a plain flag, read when traced (a buffer's value cannot be)
        # created last and without drawing from the RNG: with every code sent to 0 the model
        # is the one trained without strengths, bit for bit
        self.strength = nn.Parameter(torch.zeros(STRENGTH_CODES, cfg.dim))  # row 0 stays 0
        self.register_buffer(
            "strength_map", torch.zeros(STRENGTH_CODES, dtype=torch.int64), persistent=True
        )
        self.twin: Encoder | None = None  # the pair's second member (``pair_with``)

    @classmethod
    def from_state(cls, state: dict, cfg: TrainConfig) -> Encoder:
        """An encoder from a saved ``state_dict`` (neighbour tables of any width; one saved
        before strengths reads none; a pair's ``twin.*`` entries make it a pair)."""
        model = cls(state["text"], cfg)
        for name in NEIGHBOUR_BUFFERS:
            if name in state:
                setattr(model, name, state[name].clone())
        if any(k.startswith("twin.") for k in state):
            model.twin = cls(model.text, cfg)
            state = {"twin.strength": model.twin.strength} | state
        state = {"strength": model.strength, "strength_map": model.strength_map} | state
        model.load_state_dict(state)
        model.fused = bool(model.next_w.any() or model.near_w.any())
        return model.eval()

    @torch.no_grad()
    def pair_with(self, other: Encoder) -> None:
        """Serve the mean of this model's and ``other``'s scores (same catalog and config);
        this model's neighbour tables stay the pair's, ``other``'s own are dropped."""
        if other.text.shape != self.text.shape or other.cfg.dim != self.cfg.dim:
            raise ValueError("pair_with: the two members differ in catalog or width")
        for name in NEIGHBOUR_BUFFERS:
            old = getattr(other, name)
            setattr(other, name, torch.zeros((old.shape[0], 1), dtype=old.dtype))
        other.fused = False
        other.text = self.text  # one buffer, saved once
        self.twin = other.eval()

    def set_neighbours(self, tables, a: float, b: float) -> None:
        """Use ``fusion.Tables`` with weights ``a`` (transitions) and ``b`` (co-occurrence)."""
        with torch.no_grad():
            self.next_idx = torch.from_numpy(tables.next_idx)
            self.next_w = torch.from_numpy(tables.next_w * np.float32(a))
            self.near_idx = torch.from_numpy(tables.near_idx)
            self.near_w = torch.from_numpy(tables.near_w * np.float32(b))
        self.fused = bool(self.next_w.any() or self.near_w.any())

    def neighbour_terms(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(item indices, weights), each [B, F]: what ``history`` [B, L] adds to its row.

        Padding rows (index 0) add 0 to column 0, the padding item, which never ranks.
        """
        last = history[:, -1]
        idx = torch.cat([self.next_idx[last], self.near_idx[history].flatten(1)], dim=1)
        w = torch.cat([self.next_w[last], self.near_w[history].flatten(1)], dim=1)
        return idx, w

    def add_neighbours(self, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, M + 1] plus the neighbour terms of ``history`` [B, L]."""
        if not self.fused:  # decided when traced: an unfused model exports no scatter
            return scores
        return scores.scatter_add(1, *self.neighbour_terms(history))

    def scores(
        self, history: torch.Tensor, items: torch.Tensor, strength: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, M + 1] scores of every item (index 0 included) for ``history`` [B, L]."""
        users = self.user_vectors(history, items, strength=strength)
        return self.add_neighbours(history, users @ items.T)

    def item_vectors(
        self, idx: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vectors of items ``idx`` (any shape) -> [..., dim]; all items when None.

        ``keep``: [M + 1] float, 1 where an item keeps its id part and 0 where it is
        dropped (training only; None keeps every id part).
        """
        own = self._items(idx, keep)
        if self.twin is None:
            return own
        return torch.cat([own, self.twin.item_vectors(idx, keep)], dim=-1)  # [..., 2 dim]

    def _items(self, idx: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
        """``item_vectors`` of this member alone: [..., dim]."""
        weight = self.item_id.weight
        if idx is None:
            ids = weight if keep is None else weight * keep.unsqueeze(1)
            return self.proj(self.text) + ids
        # embedding lookups, not ids[idx]: their CPU backward is deterministic. The dropout
        # multiplies the looked-up rows only, not the whole table (and its gradient) every
        # step: keep is 0 or 1, so the values and the gradients are the same bit for bit
        own = nn.functional.embedding(idx, weight)
        if keep is not None:
            own = own * keep[idx].unsqueeze(-1)
        # the text rows by an embedding lookup too: the same copy, 2.5x faster on CPU than
        # indexing (9.0 against 3.7 ms for a step's ~12k rows of 384, one thread)
        return self.proj(nn.functional.embedding(idx, self.text)) + own

    @torch.no_grad()
    def use_strengths(self, codes: np.ndarray) -> bool:
        """Read the strength codes seen in training histories ``codes`` (any shape) only if
        they say something: two or more distinct codes. Returns whether they are read."""
        seen = np.unique(codes[codes > 0])
        self.strength_map.zero_()
        if len(seen) >= 2 and self.cfg.strengths:
            self.strength_map[torch.from_numpy(seen)] = torch.from_numpy(seen)
        return bool(self.strength_map.any())

    @torch.no_grad()
    def forget_ids(self, known: torch.Tensor) -> None:
        """Zero the id part of every item not in ``known`` ([M + 1] bool): text only."""
        self.item_id.weight[~known] = 0.0
        self.next_id.weight[~known] = 0.0

    @torch.no_grad()
    def borrow_ids(self, borrow, scale: float = 1.0) -> None:
        """Cold items (``fusion.Borrow``) take min(1, ``scale`` x text cosine) of their
        donor's id part: ``W · text`` places them, the donor's id says how that kind of item
        is used."""
        if len(borrow.cold) == 0:
            return
        sim = torch.from_numpy(borrow.sim).unsqueeze(1).mul(scale).clamp(max=1.0)
        donor = torch.from_numpy(borrow.donor)
        self.item_id.weight[torch.from_numpy(borrow.cold)] = sim * self.item_id.weight[donor]

    def user_vectors(
        self,
        history: torch.Tensor,
        items: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        strength: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """history: [B, L] item indices, most recent last, left-padded with 0 -> [B, dim]
        ([B, 2 · dim] for a pair).

        ``items``: [M + 1, dim] precomputed item vectors (None: computed for ``history``,
        with ``keep`` as in ``item_vectors``). A history item reads as its item vector
        plus its ``next_id`` part plus its strength's vector (``strength``: [B, L] codes
        beside ``history``; None: none known). A pair: both members' vectors, halved.
        """
        if self.twin is not None:
            d = self.cfg.dim
            first, second = (None, None) if items is None else (items[:, :d], items[:, d:])
            return 0.5 * torch.cat(
                [
                    self._user(history, first, keep, strength),
                    self.twin.user_vectors(history, second, keep, strength),
                ],
                dim=-1,
            )
        return self._user(history, items, keep, strength)

    def _user(self, history, items, keep, strength, looked_up=None) -> torch.Tensor:
        """``user_vectors`` of this member alone: [B, dim]. ``looked_up``: [B, L, dim] the
        history's item vectors, already computed (``sampled_logits``)."""
        # an embedding lookup, not items[history]: its backward on CPU is deterministic, the
        # indexing one accumulates in thread order (training would not repeat bit for bit)
        if looked_up is None:
            looked_up = (
                self._items(history, keep)
                if items is None
                else nn.functional.embedding(history, items)
            )
        hv = looked_up + self.next_id(history)  # [B, L, dim]
        if strength is not None:
            codes = self.strength_map[strength]  # 0 (the zero row, never trained) if unread
            hv = hv + nn.functional.embedding(codes, self.strength, padding_idx=0)
        hv = self._dropout(hv)
        mask = history > 0  # [B, L]
        if self.blocks:
            return self._attend(hv, mask)
        w = self.recency[-history.shape[1] :].expand_as(history).masked_fill(~mask, NEG)
        w = torch.softmax(w, dim=1).nan_to_num(0.0).unsqueeze(-1)  # [B, L, 1]
        pooled = (hv * w).sum(1)  # [B, dim]
        last = hv[:, -1]  # [B, dim]
        return last + self.user_mlp(torch.cat([last, pooled], dim=-1))

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """``nn.Dropout(cfg.dropout)`` while training, from ``torch.rand`` (3x faster on CPU
        than its Bernoulli draw, which was an eighth of a Beauty training step)."""
        p = self.drop.p
        if not self.training or p == 0.0:
            return x
        keep = torch.rand(x.shape, device=x.device).ge_(p)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))

    def _attend(self, hv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] history vectors, [B, L] bool -> [B, dim]: the last position's state
        after causal self-attention (each position reads itself and earlier real items)."""
        x = hv + self.position[-hv.shape[1] :]
        length = hv.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=hv.device).tril()  # j <= i
        allowed = causal.unsqueeze(0) & mask.unsqueeze(1)  # [B, L, L]
        own = torch.eye(length, dtype=torch.bool, device=hv.device).unsqueeze(0)
        allowed = allowed | own  # pads: themselves
        for block in self.blocks:
            x = block(x, allowed)
        return hv[:, -1] + self.final_norm(x[:, -1])

    def forward(
        self,
        history: torch.Tensor,
        keep: torch.Tensor | None = None,
        strength: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the next item over the whole catalog: [B, M + 1] (padding at -inf)."""
        items = self.item_vectors(keep=keep)
        logits = self.user_vectors(history, items, strength=strength) @ items.T
        return logits.index_fill(1, torch.tensor([0], device=logits.device), NEG)

    def sampled_logits(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        negatives: torch.Tensor,
        log_q: torch.Tensor,
        keep: torch.Tensor | None = None,
        strength: torch.Tensor | None = None,
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
        if self.twin is not None:  # a pair is served, never trained
            users = self.user_vectors(history, keep=keep, strength=strength)
            return users @ self.item_vectors(cand, keep).T - log_q[cand], labels
        # each distinct item's vector once: a short history is mostly padding, and the
        # history and the candidates share items (Beauty: a step's text projection 2x less)
        n = history.numel()
        uniq, inv = torch.unique(torch.cat([history.flatten(), cand]), return_inverse=True)
        vectors = self._items(uniq, keep)  # [U, dim]
        looked_up = nn.functional.embedding(inv[:n].view(history.shape), vectors)
        users = self._user(history, None, keep, strength, looked_up)
        cand_vectors = nn.functional.embedding(inv[n:], vectors)  # [C, dim]
        return users @ cand_vectors.T - log_q[cand], labels


class Block(nn.Module):
    """A pre-norm transformer block (SASRec's): self-attention, then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim], allowed [B, L, L] (query i may read key j) -> [B, L, dim]."""
        b, length, dim = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .reshape(b, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)  # [3, B, H, L, dim / H]
        )
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dim // self.heads)  # [B, H, L, L]
        att = att.masked_fill(~allowed.unsqueeze(1), NEG).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, length, dim)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.ff(self.norm2(x)))


MAX_TOP_N = 1000  # the largest top N a scorer is asked for (ScoreConfig.top_n's bound)


def block_size(n_items: int, k: int = 100, min_blocks: int = MAX_TOP_N) -> int:
    """Columns per block of the two-stage top k (1: one plain top k over every item).

    Cost per row ~ G + k·S for G = n/S blocks: least near S = sqrt(n / k) (the scorer
    uses k = 100); and G >= ``min_blocks`` so that any top ``min_blocks`` fits in whole
    blocks (the scorer: MAX_TOP_N, for any top N it is asked for).
    """
    return max(1, min(n_items // min_blocks, int(math.sqrt(n_items / k))))


class TopNScorer(nn.Module):
    """One fused scoring pass; the item matrix is frozen into the graph.

    Top-N in two stages when the catalog is large: the scores [B, M + 1] are seen as G
    blocks of S columns (the item matrix is padded with zero rows and their bias is
    -inf), the N blocks with the highest maxima are kept, and the top N is taken among
    their N·S items. Exact: an item of the top N sits in a block whose maximum is at
    least its score, and fewer than N blocks can beat it. Ties keep the plain top-N's
    order (lower item index first): blocks are ranked by maximum then index, and
    gathered in index order.
    """

    item_matrix: torch.Tensor  # buffer: [G * S, dim], rows past M + 1 all zeros

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():
            items = encoder.item_vectors().detach().clone()  # [M + 1, dim]
        self.n_index = items.shape[0]
        self.block = block_size(self.n_index)
        pad = -self.n_index % self.block
        self.register_buffer("item_matrix", nn.functional.pad(items, (0, 0, 0, pad)))

    def forward(
        self,
        history: torch.Tensor,  # [B, L] int64
        exclude: torch.Tensor,  # [B, E] int64, padded with 0
        item_bias: torch.Tensor,  # [M + 1] float32: 0, or -inf for inactive items and padding
        k_like: torch.Tensor,  # [K]: only its length is read, so K is chosen at run time
        strength: torch.Tensor | None = None,  # [B, L] int64 codes beside ``history``
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = k_like.shape[0]
        pad = self.item_matrix.shape[0] - self.n_index
        bias = nn.functional.pad(item_bias, (0, pad), value=NEG)  # [G * S]
        users = self.encoder.user_vectors(history, self.item_matrix, strength=strength)
        scores = users @ self.item_matrix.T  # [B, G * S]: a plain MatMul in ONNX Runtime
        # the bias is 0 or -inf: its -inf items (inactive, removed, padding) go in with the
        # seen items, so that no dense pass adds it (in the Gemm it cost 5-15% of the core)
        off = torch.nonzero(bias == NEG).reshape(1, -1).expand(users.shape[0], -1)
        exclude = torch.cat([exclude, off], dim=1)
        if self.encoder.fused:  # neighbour terms and the excluded items' -inf in one scatter
            idx, w = self.encoder.neighbour_terms(history)
            idx = torch.cat([idx, exclude], dim=1)
            w = torch.cat([w, torch.full(exclude.shape, NEG, dtype=w.dtype)], dim=1)
            scores = scores.scatter_add(1, idx, w)
        else:
            scores = scores.scatter(1, exclude, NEG)
        if self.block == 1:
            top_scores, top_idx = torch.topk(scores, k, dim=1)  # [B, K]
        else:
            top_scores, top_idx = self._two_stage(scores, k)
        # why: the history item most similar to each recommendation
        # (padding slots get -inf by an added [B, 1, L] row: cheaper than a masked fill)
        empty = torch.zeros(history.shape, dtype=users.dtype).masked_fill(history == 0, NEG)
        hist_t = self.item_matrix[history].transpose(1, 2)  # [B, dim, L]
        sim = self.item_matrix[top_idx] @ hist_t + empty.unsqueeze(1)  # [B, K, L]
        because = torch.gather(history, 1, sim.argmax(-1))  # [B, K]
        return top_scores, top_idx, because

    def _two_stage(self, scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, b = self.block, scores.shape[0]
        blocks = scores.reshape(-1, s)  # [B * G, S]: block g of user i is row i * G + g
        g = scores.shape[1] // s
        # [B, K] blocks to search, as a set (unsorted: cheaper), then in index order
        _, best = torch.topk(blocks.amax(-1).reshape(b, g), k, dim=1, sorted=False)
        best, _ = torch.sort(best, dim=1)  # index order: ties go to the lower item index
        rows = best + torch.arange(b, device=best.device).unsqueeze(1) * g  # [B, K]
        cand = blocks[rows.reshape(-1)].reshape(b, -1)  # [B, K * S]: whole rows, no per-cell index
        top_scores, pos = torch.topk(cand, k, dim=1)  # [B, K]
        top_idx = torch.gather(best, 1, pos // s) * s + pos % s
        return top_scores, top_idx


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
