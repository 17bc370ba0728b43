"""The scorer on the CPU with nightrec's own top-N kernel: the same lists, faster.

``scorer.onnx`` does everything in one ONNX Runtime graph: the user vectors, the product
with the item matrix, the neighbour terms and the dropped items (one scatter), an exact
two-stage top N and the "because" item. On the CPU the steps after the product cost as
much as the product itself: ONNX Runtime's TopK has a fixed cost per row, the block
maxima and the scatter each pass over the whole score matrix, and the many small nodes
wake its thread pool one by one (``bench/score.py``, README "Benchmark").

``SplitScorer`` runs the same graph in three parts, cut out of the verified file itself
(no second artifact, so the int8 scorer splits the same way):

1. ONNX Runtime up to the scatter: the score matrix and the scatter's indices and values;
2. ``select_rows`` (Numba, compiled on first use): the scatter in place, then an exact
   top N per row in a few passes that stay in the core's cache;
3. ONNX Runtime from the top-N indices to the "because" item.

A scoring batch is cut into parts of ``ScoreConfig.model_batch`` users (the rows one
call of the fused graph takes) shared among single-threaded workers, one per CPU, each
running the three steps on its own part: a part's score matrix is still in that core's
cache when the kernel reads it, and no thread pool is woken between small nodes.

The lists are the fused graph's, bit for bit: the same product (the same ONNX Runtime
nodes), the scatter applied in the same order, the top N ordered as TopK orders it (by
score, ties to the lower index, -0.0 tied with 0.0), and the "because" part is the
graph's own nodes. ``tests/test_topk.py`` holds both to that.
"""

from __future__ import annotations

import concurrent.futures
import logging
import types
from pathlib import Path

import numpy as np
from numba import njit

log = logging.getLogger(__name__)

PER_ROW = ("history", "exclude", "strength")  # scorer inputs with one row per user
CHUNK = 64  # columns per count in the candidate scan (a multiple of the vector width)
_LOW = np.uint64(0xFFFFFFFF)


class Unsplittable(Exception):
    """The scorer graph is not shaped as ``SplitScorer`` expects (the fused graph serves)."""


@njit(boundscheck=False, nogil=True, inline="always", cache=False)
def _key(bits, j):  # pragma: no cover - compiled
    """A uint64 whose ascending order is TopK's: score descending, then index ascending.

    ``bits``: the float32 score's bits. -0.0 is taken as 0.0 (they tie in TopK)."""
    u = np.uint64(bits)
    if (u & np.uint64(0x7FFFFFFF)) == 0:
        u = np.uint64(0)
    # the usual order-preserving map of float bits to unsigned integers, then reversed
    asc = (u ^ np.uint64(0x80000000)) if u < np.uint64(0x80000000) else (u ^ _LOW)
    return ((_LOW - asc) << np.uint64(32)) | np.uint64(j)


@njit(boundscheck=False, nogil=True, inline="always", cache=False)
def _split(a, lo, hi):  # pragma: no cover - compiled
    """Hoare's partition of ``a[lo:hi + 1]`` in place around the median of its first,
    middle and last values: (i, j) with ``a[lo:j + 1]`` <= pivot <= ``a[i:hi + 1]``."""
    mid = (lo + hi) // 2
    if a[mid] < a[lo]:
        a[mid], a[lo] = a[lo], a[mid]
    if a[hi] < a[lo]:
        a[hi], a[lo] = a[lo], a[hi]
    if a[hi] < a[mid]:
        a[hi], a[mid] = a[mid], a[hi]
    pivot = a[mid]
    i, j = lo, hi
    while i <= j:
        while a[i] < pivot:
            i += 1
        while a[j] > pivot:
            j -= 1
        if i <= j:
            a[i], a[j] = a[j], a[i]
            i += 1
            j -= 1
    return i, j


@njit(boundscheck=False, nogil=True, cache=False)
def _kth_largest(a, k):  # pragma: no cover - compiled
    """The k-th largest value of ``a`` (reordered in place; no NaN): a quickselect,
    several times faster here than ``np.partition`` on a few hundred values."""
    lo, hi = 0, a.shape[0] - 1
    want = a.shape[0] - k  # its index in ascending order
    while lo < hi:
        i, j = _split(a, lo, hi)
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break
    return a[want]


@njit(boundscheck=False, nogil=True, cache=False)
def _sort_keys(a, n):  # pragma: no cover - compiled
    """``a[:n]`` (distinct uint64 keys) sorted in place: quicksort with insertion sort
    for short runs (``np.sort`` costs ~3x as much on these ~130 keys)."""
    stack = np.empty(128, np.int64)
    stack[0], stack[1] = 0, n - 1
    top = 2
    while top > 0:
        hi = stack[top - 1]
        lo = stack[top - 2]
        top -= 2
        while hi - lo > 16:
            i, j = _split(a, lo, hi)
            # the longer side goes on the stack, the shorter is sorted next: depth <= log n
            if j - lo < hi - i:
                stack[top], stack[top + 1] = i, hi
                top += 2
                hi = j
            else:
                stack[top], stack[top + 1] = lo, j
                top += 2
                lo = i
        for x in range(lo + 1, hi + 1):
            v = a[x]
            y = x - 1
            while y >= lo and a[y] > v:
                a[y + 1] = a[y]
                y -= 1
            a[y + 1] = v


@njit(boundscheck=False, nogil=True, inline="always", cache=False)
def _row(row, idx_r, w_r, add, k, bm, cnt, cand, keys, out_s, out_i):  # pragma: no cover
    """One user's row: scatter, then its exact top ``k`` into ``out_s``/``out_i``.

    Exact: the row's first G·S cells are seen as G = len(bm) interleaved blocks of S (cell
    g + s·G is in block g); ``thr`` is the k-th largest block maximum. k blocks hold a cell
    of at least ``thr``, so the k-th largest score is at least ``thr`` and every cell of
    the top k is among the cells at or above it, which are then ordered in full (TopK's
    order). Interleaved blocks make the maxima a vertical max over contiguous runs.
    Returns how many cells were at or above ``thr``, or -1 if fewer than k (NaN scores).
    """
    m = row.shape[0]
    if add:
        for j in range(idx_r.shape[0]):
            row[idx_r[j]] += w_r[j]
    else:
        for j in range(idx_r.shape[0]):
            row[idx_r[j]] = w_r[j]
    g_n = bm.shape[0]
    s_n = m // g_n
    thr = np.float32(-np.inf)
    if g_n > k and s_n > 0:
        for g in range(g_n):
            bm[g] = row[g]
        for s in range(1, s_n):
            base = s * g_n
            for g in range(g_n):
                v = row[base + g]
                bm[g] = v if v > bm[g] else bm[g]
        for g in range(g_n):  # a NaN maximum (a NaN first cell) bounds nothing
            if bm[g] != bm[g]:
                bm[g] = -np.inf
        thr = _kth_largest(bm, k)
    # count the cells at or above thr per chunk (vectorised), then visit only the chunks
    # that have some, in index order
    nc = m // CHUNK
    for c in range(nc):
        base = c * CHUNK
        h = 0
        for j in range(CHUNK):
            h += row[base + j] >= thr
        cnt[c] = h
    n = 0
    for c in range(nc):
        h = cnt[c]
        if h == 0:
            continue
        base = c * CHUNK
        if h == 1:  # the usual case: its position without a branch per cell
            p = 0
            for j in range(CHUNK):
                p += j * (row[base + j] >= thr)
            cand[n] = base + p
            n += 1
        else:
            for j in range(base, base + CHUNK):
                if row[j] >= thr:
                    cand[n] = j
                    n += 1
    for j in range(nc * CHUNK, m):
        if row[j] >= thr:
            cand[n] = j
            n += 1
    if n < k:
        return -1
    bits = row.view(np.uint32)
    for t in range(n):
        keys[t] = _key(bits[cand[t]], cand[t])
    _sort_keys(keys, n)
    for t in range(k):
        j = np.int64(keys[t] & _LOW)
        out_i[t] = j
        out_s[t] = row[j]
    return n


@njit(boundscheck=False, nogil=True, cache=False)
def _select(scores, idx, w, add, k, out_s, out_i):  # pragma: no cover - compiled
    b, m = scores.shape
    bm = np.empty(2 * k, np.float32)  # 2k blocks: ~1.4k cells at or above thr (random rows)
    cnt = np.empty(m // CHUNK, np.int32)
    cand = np.empty(m, np.int64)
    keys = np.empty(m, np.uint64)
    for r in range(b):
        if _row(scores[r], idx[r], w[r], add, k, bm, cnt, cand, keys, out_s[r], out_i[r]) < 0:
            return r
    return -1


def _cache_compiled() -> None:
    """Keep the compiled kernel on disk (Numba's cache: beside this file, else the user's
    cache folder or ``NUMBA_CACHE_DIR``): compiling it takes seconds. Where no folder is
    writable it is compiled in each process, as without a cache."""
    try:
        _select.enable_caching()
    except Exception as e:  # noqa: BLE001 - no writable cache folder: compile each time
        log.debug("topk: no cache for the compiled kernel (%s)", e)


_cache_compiled()


def select_rows(
    scores: np.ndarray, idx: np.ndarray, w: np.ndarray, add: bool, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` [B, M] (changed in place): the scatter (``row[idx] += w`` in
    ``idx`` order when ``add``, else ``row[idx] = w``), then the top ``k`` as ONNX Runtime's
    TopK gives it (score descending, ties to the lower column): ([B, k] float32, [B, k]
    int64). Runs in the calling thread without the GIL."""
    if scores.dtype != np.float32 or scores.ndim != 2 or not scores.flags.c_contiguous:
        raise ValueError("scores must be a C-contiguous [B, M] float32 matrix")
    b, m = scores.shape
    if not 1 <= k <= m:
        raise ValueError(f"top {k} asked of rows of {m} scores")
    if idx.shape != w.shape or idx.shape[0] != b:
        raise ValueError(f"scatter indices {idx.shape} and values {w.shape} for {b} rows")
    if idx.size and (idx.min() < 0 or idx.max() >= m):
        raise ValueError(f"scatter index outside 0..{m - 1}")
    out_s = np.empty((b, k), np.float32)
    out_i = np.empty((b, k), np.int64)
    bad = _select(
        scores,
        np.ascontiguousarray(idx, dtype=np.int64),
        np.ascontiguousarray(w, dtype=np.float32),
        bool(add),
        int(k),
        out_s,
        out_i,
    )
    if bad >= 0:
        raise ValueError(f"row {bad} has fewer than {k} comparable scores (NaN in the scores)")
    return out_s, out_i


def single_threaded():
    """ONNX Runtime session options for one worker of a pool that has one per core."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return opts


def matmul_model(weights: np.ndarray) -> bytes:
    """A serialized ONNX graph of one MatMul, ``rows`` [B, d] @ ``weights`` [d, n] ->
    ``sims`` [B, n], the weights an initializer: MLAS's product, as the scorer runs it."""
    from onnx import TensorProto, helper, numpy_helper

    from nightrec.config import ONNX_IR_VERSION

    d, n = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["rows", "weights"], ["sims"])],
        "matmul",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["b", d])],
        [helper.make_tensor_value_info("sims", TensorProto.FLOAT, ["b", n])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ONNX_IR_VERSION
    )
    return model.SerializeToString()


class SplitScorer:
    """``scorer.onnx`` on the CPU in three parts (module docstring); called like an ONNX
    Runtime session by ``score.run_scorer``: ``run(None, feed)`` -> [top_scores [B, K],
    top_index [B, K], because [B, K]], K = ``len(feed["k_like"])``."""

    takes_whole_batches = True  # run_scorer hands it a whole batch; it cuts its own parts

    def __init__(self, path: Path, threads: int, rows: int) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        graph = model.graph
        scatters = [n for n in graph.node if n.op_type == "ScatterElements"]
        names = [o.name for o in graph.output]
        if len(scatters) != 1 or len(names) != 3:
            raise Unsplittable(f"{len(scatters)} scatters, {len(names)} outputs")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in scatters[0].attribute}
        reduction = attrs.get("reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if reduction not in ("none", "add") or attrs.get("axis", 0) not in (1, -1):
            raise Unsplittable(f"scatter reduction {reduction!r}, axis {attrs.get('axis')}")
        self._add = reduction == "add"
        inputs = [i.name for i in graph.input]
        if "k_like" not in inputs or "history" not in inputs:
            raise Unsplittable(f"inputs {inputs}")
        extractor = onnx.utils.Extractor(model)
        try:
            feeds = [i for i in inputs if i != "k_like"]
            head = extractor.extract_model(feeds, list(scatters[0].input))
            tail = extractor.extract_model([names[1], *inputs], [names[2]])
        except Exception as e:  # noqa: BLE001 - any graph the extractor cannot cut
            raise Unsplittable(f"cannot cut the graph: {e}") from e
        self._top_name = names[1]
        opts = single_threaded()  # one worker per core: each runs its own rows
        cpu = ["CPUExecutionProvider"]
        try:  # (a part over 2 GB cannot be serialized: the fused graph serves)
            self._head = ort.InferenceSession(head.SerializeToString(), opts, providers=cpu)
            self._tail = ort.InferenceSession(tail.SerializeToString(), opts, providers=cpu)
        except ValueError as e:
            raise Unsplittable(f"cannot load a part: {e}") from e
        del model, head, tail  # the sessions hold what they need
        self._head_in = [i.name for i in self._head.get_inputs()]
        self._tail_in = [i.name for i in self._tail.get_inputs() if i.name != names[1]]
        self._inputs = [types.SimpleNamespace(name=n) for n in inputs]
        self.threads = max(1, int(threads))
        self.rows = max(1, int(rows))
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="score-topk")
            if self.threads > 1
            else None
        )

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_inputs(self) -> list:
        return self._inputs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _part(self, feed: dict, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seen = feed["exclude"]  # cut to this part's widest user, as run_scorer cuts a call
        used = np.flatnonzero((seen != 0).any(axis=0))
        width = int(used[-1]) + 1 if len(used) else 1
        feed = {**feed, "exclude": np.ascontiguousarray(seen[:, :width])}
        scores, idx, w = self._head.run(None, {n: feed[n] for n in self._head_in})
        top_s, top_i = select_rows(scores, idx, w, self._add, k)
        tail = {n: feed[n] for n in self._tail_in}
        (because,) = self._tail.run(None, {self._top_name: top_i, **tail})
        return top_s, top_i, because

    def run(self, _output_names, feed: dict) -> list[np.ndarray]:
        """The scorer's outputs for every row of ``feed``, computed in parts of ``rows``
        users (what one ONNX Runtime call of the fused graph takes on the CPU: the int8
        scorer quantizes each call's user vectors together, so its lists depend on the
        rows scored together, never on the number of workers)."""
        k = int(feed["k_like"].shape[0])
        n = int(feed["history"].shape[0])
        cuts = list(range(0, n, self.rows)) + [n]
        parts = [
            {name: (v[lo:hi] if name in PER_ROW else v) for name, v in feed.items()}
            for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        if self._pool is None or len(parts) == 1:
            outs = [self._part(part, k) for part in parts]
        else:
            outs = list(self._pool.map(lambda part: self._part(part, k), parts))
        if len(outs) == 1:
            return list(outs[0])
        return [np.concatenate(col) for col in zip(*outs, strict=True)]
