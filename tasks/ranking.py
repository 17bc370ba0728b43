"""The ranking layer after the encoder's candidates: popularity blend, MMR, category cap.

With the defaults (``RankConfig()``: alpha 1, lambda 0, no cap) the layer is off and
the scorer's top N is published as it comes: today's lists, unchanged. Otherwise the
scorer returns the top ``candidates x N`` items of each user (seen and inactive items
already out) and this layer re-ranks them:

- **blend**: ``alpha · sim + (1 - alpha) · pop``; ``sim`` is the encoder's score min-max
  scaled over the user's candidates (1 = best), ``pop`` the catalog's recent,
  time-decayed popularity scaled by its maximum (``decayed_popularity``).
- **MMR** (Carbonell & Goldstein, 1998): greedily, the next item maximises
  ``(1 - lambda) · blended - lambda · max cosine(text, items already chosen)``; lambda 1
  gives the most diverse list the candidates allow.
- **category cap**: at most ``category_cap`` items of one category in a list (items
  without a category count as one category each).

Ties go to the earlier candidate (the encoder's order, itself by item index). The
"because" item stays the scorer's (the history item most like the recommendation);
``reason`` becomes ``trending`` where the popularity term outweighs the similarity
term, else ``similar_to_recent`` where that history item is among the user's last
``RECENT`` items, else ``history``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import torch

from nightrec.config import check_int, check_number

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 15.0  # similar items log their progress at most this often
RECENT = 3  # history items that count as "recent" for the similar_to_recent reason
REASONS = ("history", "trending", "similar_to_recent")


@dataclass(frozen=True)
class RankConfig:
    alpha: float = 1.0  # weight of the encoder's similarity; 1 - alpha goes to popularity
    mmr_lambda: float = 0.0  # weight of diversity in MMR; 0: off
    category_cap: int = 0  # most items of one category per list; 0: no cap
    candidates: int = 3  # the layer re-ranks the top candidates x N items of the encoder
    half_life_days: float = 7.0  # popularity: an interaction counts half after this many days
    window_days: int = 30  # ... and not at all before this many days

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_number("mmr_lambda", self.mmr_lambda, 0.0, 1.0)
        check_int("category_cap", self.category_cap, 0, 1000)
        check_int("candidates", self.candidates, 1, 100)
        check_number("half_life_days", self.half_life_days, 0.0, 3650.0, lo_open=True)
        check_int("window_days", self.window_days, 1, 36_500)

    @property
    def active(self) -> bool:
        """Whether the layer changes anything (else the scorer's top N is published)."""
        return self.alpha < 1.0 or self.mmr_lambda > 0.0 or self.category_cap > 0


def decayed_popularity(
    interactions: pl.DataFrame, item_ids: pl.Series, cutoff_us: int, cfg: RankConfig
) -> np.ndarray:
    """[len(item_ids)] sum over users of 0.5 ** (days since their last interaction with the
    item / half-life), within ``window_days`` before ``cutoff_us`` (µs), scaled to max 1."""
    age_days = (cutoff_us - pl.col("last_ts").dt.epoch("us")) / 86_400_000_000
    per_item = (
        interactions.filter(age_days <= cfg.window_days)
        .group_by("item_id")
        .agg((0.5 ** (age_days.clip(0.0) / cfg.half_life_days)).sum().alias("pop"))
    )
    pop = (
        pl.DataFrame({"item_id": item_ids})
        .join(per_item, on="item_id", how="left", maintain_order="left")["pop"]
        .fill_null(0.0)
        .to_numpy()
    )
    top = pop.max(initial=0.0)
    return (pop / top if top > 0 else pop).astype(np.float32)


def category_codes(categories: pl.Series) -> np.ndarray:
    """Integer codes; a missing category gets a code of its own per item (never capped
    together with another item)."""
    codes = categories.cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    missing = categories.is_null().to_numpy()
    codes[missing] = -1 - np.flatnonzero(missing)
    return codes


@dataclass
class Layer:
    """What the layer needs about every model item index (0 = padding)."""

    pop: np.ndarray  # [M + 1] float32 in [0, 1]
    vectors: np.ndarray | None  # [M + 1, T] unit text vectors (MMR only)
    category: np.ndarray | None  # [M + 1] int64 codes (category cap only)
    cfg: RankConfig

    @classmethod
    def from_snapshot(
        cls, snapshot_dir: Path, model_items: pl.DataFrame, cfg: RankConfig, cutoff_us: int
    ) -> Layer:
        """For the model's items (``item_id``, ``idx`` 1..M) from a snapshot's files."""
        from nightrec.embed import load_embeddings

        ids = model_items.sort("idx")["item_id"]
        inter = pl.read_parquet(
            snapshot_dir / "interactions.parquet", columns=["item_id", "last_ts"]
        )
        pop = np.concatenate([[0.0], decayed_popularity(inter, ids, cutoff_us, cfg)])
        catalog = pl.read_parquet(snapshot_dir / "items.parquet")
        order = pl.DataFrame({"item_id": ids}).join(
            catalog.with_row_index("row"), on="item_id", how="left", maintain_order="left"
        )
        text = load_embeddings(snapshot_dir)[order["row"].to_numpy()] if cfg.mmr_lambda else None
        return cls.of(pop, cfg, text, order["category"])

    @classmethod
    def of(
        cls, pop: np.ndarray, cfg: RankConfig, text: np.ndarray | None, categories: pl.Series | None
    ) -> Layer:
        """From popularity [M + 1], text vectors [M, T] and categories [M] of items 1..M;
        only what ``cfg`` uses is kept."""
        vectors = category = None
        if cfg.mmr_lambda > 0 and text is not None:
            unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
            vectors = np.vstack([np.zeros((1, text.shape[1])), unit]).astype(np.float32)
        if cfg.category_cap > 0 and categories is not None:
            category = np.concatenate([[-(10**12)], category_codes(categories)])
        return cls(pop.astype(np.float32), vectors, category, cfg)


def layer_for_split(split, text: np.ndarray, catalog: pl.DataFrame, cfg: RankConfig) -> Layer:
    """The layer as an evaluation split sees it: popularity from the split's training part
    only (decayed by each pair's first interaction, the time splits keep), text vectors and
    categories of the catalog (``train.load_catalog`` order = model index 1..M)."""
    t = split.train_t
    cutoff = int(t.max()) + 1 if len(t) else 0
    age = (cutoff - t) / 86_400_000_000
    recent = age <= cfg.window_days
    n_index = catalog.height + 1
    pop = np.bincount(
        split.train.seq[recent],
        weights=0.5 ** (age[recent] / cfg.half_life_days),
        minlength=n_index,
    )
    pop = pop / pop.max() if pop.max(initial=0.0) > 0 else pop
    categories = catalog["category"] if "category" in catalog.columns else None
    return Layer.of(pop, cfg, text, categories)


def rerank(
    layer: Layer, idx: np.ndarray, score: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-rank candidates ``idx`` [B, C] (encoder scores ``score`` [B, C], best first,
    -inf where there is no candidate) into [B, k] lists.

    Returns (positions into the candidates [B, k], final scores [B, k], whether the
    popularity term outweighs the similarity term [B, k], valid [B, k]).
    """
    cfg = layer.cfg
    b, c = idx.shape
    valid = np.isfinite(score)
    lo = np.where(valid, score, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, score, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    sim = np.where(valid, (score - lo) / span, 0.0)  # [B, C] in [0, 1]
    pop = layer.pop[idx]
    blended = np.where(valid, cfg.alpha * sim + (1.0 - cfg.alpha) * pop, -np.inf)
    trending = (1.0 - cfg.alpha) * pop > cfg.alpha * sim
    k = min(k, c)
    if cfg.mmr_lambda == 0.0 and cfg.category_cap == 0:
        order = np.argsort(-blended, axis=1, kind="stable")[:, :k]  # ties: candidate order
        ok = np.isfinite(np.take_along_axis(blended, order, axis=1))
    else:
        order, ok = _greedy(layer, idx, blended, k)
    picked = np.where(ok, np.take_along_axis(blended, order, axis=1), -np.inf)
    return order, picked, np.take_along_axis(trending, order, axis=1) & ok, ok


def _greedy(
    layer: Layer, idx: np.ndarray, blended: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """MMR and the category cap, one position at a time for a whole batch.

    Returns (positions [B, k], valid [B, k]): a list ends early when nothing is left.
    """
    cfg = layer.cfg
    b, c = idx.shape
    rows = np.arange(b)
    left = np.isfinite(blended)  # [B, C] still selectable
    order = np.zeros((b, k), dtype=np.int64)
    ok = np.zeros((b, k), dtype=bool)
    closest = np.zeros((b, c), dtype=np.float32)  # max cosine to the items chosen so far
    vec = layer.vectors[idx] if layer.vectors is not None and cfg.mmr_lambda > 0 else None
    cat = counts = None
    if layer.category is not None and cfg.category_cap > 0:
        _, cat = np.unique(layer.category[idx], return_inverse=True)
        cat = cat.reshape(b, c)  # dense codes within the batch
        counts = np.zeros((b, int(cat.max()) + 1), dtype=np.int64)
    for pos in range(k):
        value = (1.0 - cfg.mmr_lambda) * blended
        if vec is not None and pos > 0:
            value = value - cfg.mmr_lambda * closest
        value = np.where(left, value, -np.inf)
        best = np.argmax(value, axis=1)  # the first of equal values: candidate order
        got = np.isfinite(value[rows, best])
        order[:, pos], ok[:, pos] = best, got
        left[rows, best] = False
        if vec is not None:
            closest = np.maximum(closest, np.einsum("bcd,bd->bc", vec, vec[rows, best]))
        if cat is not None and counts is not None:
            chosen = cat[rows, best]
            counts[rows[got], chosen[got]] += 1
            left &= counts[rows[:, None], cat] < cfg.category_cap
    return order, ok


def reasons(trending: np.ndarray, because: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """[B, k] reason strings: trending, similar_to_recent (``because`` [B, k] among the
    user's ``recent`` [B, R] items; 0 = none) or history."""
    near = (because[:, :, None] == recent[:, None, :]).any(-1) & (because > 0)
    out = np.where(trending, "trending", np.where(near, "similar_to_recent", "history"))
    return out.astype(object)


def similar_items(
    item_matrix: np.ndarray,
    active: np.ndarray,
    k: int,
    max_cells: int = 1 << 25,
    threads: int | None = None,
    kernel: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``k`` active items per active item by cosine of the item tower's vectors.

    ``item_matrix`` [M + 1, d] (row 0 padding), ``active`` [M + 1] bool. Never the item
    itself; ties by lower index. Returns (item [n], similar item [n, k], cosine [n, k])
    for the active items, -1 / nan where fewer than ``k`` others exist. Memory: at most
    ``max_cells`` similarities in flight (128 MB of float32 at the default).

    On ``threads`` workers (default: one per CPU), each with its own batches of items: the
    product by ONNX Runtime (MLAS, one thread), then the top-N kernel's exact top ``k``
    (``topk.select_rows``, Numba) with the item itself dropped. Without Numba, PyTorch and
    ``top_k_rows`` instead (``kernel`` False asks for that path): the same order (by value,
    then lower index). An item whose vector is not finite gets no similar items and is no
    one's (with a warning).
    """
    norm = np.linalg.norm(item_matrix, axis=1, keepdims=True)
    unit = (item_matrix / np.maximum(norm, 1e-12)).astype(np.float32)
    finite = np.isfinite(unit).all(axis=1)
    items = np.flatnonzero(active)
    cols = np.flatnonzero(active & finite)  # candidates: active items with a usable vector
    if len(cols) < len(items):
        log.warning(
            "similar items: %d active items have a vector that is not finite (NaN or inf): "
            "they get no similar items and are no one's",
            len(items) - len(cols),
        )
    k = min(k, max(len(cols) - 1, 0))
    out_i = np.full((len(items), k), -1, dtype=np.int64)
    out_s = np.full((len(items), k), np.nan, dtype=np.float32)
    if k == 0:
        return items, out_i, out_s
    got_i, got_s = out_i[: len(cols)].copy(), out_s[: len(cols)].copy()  # a row per column
    progress = _Progress(len(cols))
    if kernel:
        try:
            _similar_kernel(unit, cols, k, max_cells, threads, got_i, got_s, progress)
        except _NoKernel as e:
            log.warning("similar items: %s; PyTorch takes the top %d instead (slower)", e, k)
            kernel = False
    if not kernel:
        _similar_torch(unit, cols, k, max_cells, got_i, got_s, progress)
    where = np.searchsorted(items, cols)
    out_i[where], out_s[where] = got_i, got_s
    return items, out_i, out_s


class _NoKernel(Exception):
    """The kernel path cannot run here (no Numba, or the product cannot be built)."""


class _Progress:
    """Items done so far, logged at most every ``PROGRESS_SECONDS`` (the product is
    quadratic in the catalog: a million items take many minutes). Thread-safe."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.perf_counter()
            if now - self.last < PROGRESS_SECONDS or self.done >= self.total:
                return
            self.last = now
            log.info(
                "similar items: %d/%d items (%.0f items/s)",
                self.done,
                self.total,
                self.done / max(now - self.started, 1e-9),
            )


def _similar_kernel(
    unit: np.ndarray,
    items: np.ndarray,
    k: int,
    max_cells: int,
    threads: int | None,
    out_i: np.ndarray,
    out_s: np.ndarray,
    progress: _Progress,
) -> None:
    """``similar_items`` of ``items`` among themselves (unit vectors, all finite) by ONNX
    Runtime's product and the top-N kernel (its docstring)."""
    import concurrent.futures

    try:
        from nightrec import topk
    except ImportError as e:  # the GPU check machine carries only some wheels
        raise _NoKernel(f"no Numba ({e})") from e
    import onnxruntime as ort

    from nightrec.workers import cpus

    n = len(items)
    cand = np.ascontiguousarray(unit[items].T)  # [d, n]
    if cand.nbytes >= 2**31 - 2**20:  # over protobuf's 2 GB: no graph can hold it
        raise _NoKernel(f"the item matrix ({cand.nbytes / 2**30:.1f} GB) is too large")
    session = ort.InferenceSession(  # one worker per core, each with its own batches
        topk.matmul_model(cand), topk.single_threaded(), providers=["CPUExecutionProvider"]
    )
    del cand  # the session holds the matrix
    workers = max(1, threads or cpus())
    batch = max(1, max_cells // (n * workers))
    own = np.arange(n, dtype=np.int64)  # item items[j] is candidate column j

    def one(lo: int) -> None:
        hi = min(lo + batch, n)
        (sims,) = session.run(None, {"rows": unit[items[lo:hi]]})
        drop = own[lo:hi, None]  # the item itself to -inf, then the exact top k (TopK's order)
        vals, part = topk.select_rows(
            sims, drop, np.full(drop.shape, -np.inf, np.float32), False, k
        )
        out_i[lo:hi] = items[part]
        out_s[lo:hi] = vals
        progress.add(hi - lo)

    starts = range(0, n, batch)
    if workers == 1 or len(starts) == 1:
        for lo in starts:
            one(lo)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="similar") as pool:
        for _ in pool.map(one, starts):
            pass


def _similar_torch(
    unit: np.ndarray,
    items: np.ndarray,
    k: int,
    max_cells: int,
    out_i: np.ndarray,
    out_s: np.ndarray,
    progress: _Progress,
) -> None:
    """``similar_items`` of ``items`` among themselves by PyTorch's product and
    ``top_k_rows``."""
    import torch

    from nightrec.model import block_size

    n, s = len(items), block_size(len(items), k, k)
    width = -(-n // s) * s  # zero columns up to top_k_rows' whole blocks (-inf below): no copy
    cand = torch.zeros(unit.shape[1], width)
    cand[:, :n] = torch.from_numpy(np.ascontiguousarray(unit[items].T))  # [d, n] + padding
    batch = max(1, min(max_cells, 1 << 22) // max(width, 1))  # 16 MB at most, as before
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        with torch.inference_mode():
            sims = torch.from_numpy(unit[items[lo:hi]]) @ cand  # [B, n]
            sims[torch.arange(hi - lo), torch.arange(lo, hi)] = -torch.inf  # not itself
            sims[:, n:] = -torch.inf
            vals, part = top_k_rows(sims, k)
        out_i[lo:hi] = items[part]
        out_s[lo:hi] = vals
        progress.add(hi - lo)


def top_k_rows(sims: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` (1 <= k <= n) per row of ``sims`` [B, n]: (values [B, k], columns
    [B, k]), by value then lower column.

    In two stages when rows are long, as the scorer's top N (``model.TopNScorer``): the
    row is cut into blocks of S columns, the k blocks with the highest maxima are kept
    and the top k is taken among their k·S cells. Exact: every cell at least the k-th
    value lies in a kept block, unless a block left out ties the k-th value exactly;
    such rows, and rows with a tie at the k-th place among the kept cells, are redone
    over the whole row.
    """
    import torch

    from nightrec.model import block_size

    b, n = sims.shape
    s = block_size(n, k, k)
    if s == 1:
        vals, part = torch.topk(sims, k, dim=1)
        return _ties(sims.numpy(), vals.numpy(), part.numpy(), np.arange(n), k)
    g = -(-n // s)
    if g * s > n:  # a copy: callers that can, pad the columns themselves (similar_items)
        sims = torch.nn.functional.pad(sims, (0, g * s - n), value=-torch.inf)
    padded = sims.reshape(b, g, s)
    bmax = padded.amax(-1)  # [B, G]
    _, best = torch.topk(bmax, k, dim=1)
    best, _ = torch.sort(best, dim=1)
    cand = padded[torch.arange(b)[:, None], best].reshape(b, k * s)  # [B, k*S]
    col = (best[:, :, None] * s + torch.arange(s)).reshape(b, k * s).numpy()
    vals, pos = torch.topk(cand, k, dim=1)
    kth = vals[:, -1:]
    # every element >= the k-th value lies in a chosen block unless another block ties it
    outside = (bmax >= kth).sum(1) > k
    v, c = _ties(cand.numpy(), vals.numpy(), pos.numpy(), col, k)
    whole = np.arange(n)
    for r in np.flatnonzero(outside.numpy()):  # exact ties across blocks: the whole row
        v[r], c[r] = _exact_row(sims[r, :n].numpy(), whole, v[r, -1], k)
    return v, c


def _exact_row(
    row: np.ndarray, cols: np.ndarray, kth: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of one row (columns ``cols``, ascending) whose k-th value is ``kth``:
    every cell above it, then the lowest columns that equal it; by value then column.
    Linear in the row (no sort of it), so that rows of massive ties stay cheap."""
    above = np.flatnonzero(row > kth)
    at = np.flatnonzero(row == kth)[: k - len(above)]
    pick = np.concatenate([above, at])
    order = np.lexsort((cols[pick], -row[pick]))
    return row[pick][order], cols[pick][order]


def _ties(
    cand: np.ndarray, vals: np.ndarray, pos: np.ndarray, col: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``torch.topk``'s (vals, pos) of ``cand`` [B, c] (whose columns are ``col``, [c] or
    [B, c]) ordered by value then column; rows with a tie at the k-th place redone exactly
    (topk may keep any of the tied cells)."""
    cols = np.take_along_axis(col, pos, axis=1) if col.ndim == 2 else col[pos]
    order = np.lexsort((cols, -vals), axis=1)
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    kth = vals[:, -1:]
    tied = np.flatnonzero((cand == kth).sum(axis=1) > (vals == kth).sum(axis=1))
    for r in tied:
        vals[r], cols[r] = _exact_row(cand[r], col[r] if col.ndim == 2 else col, kth[r, 0], k)
    return vals, cols
