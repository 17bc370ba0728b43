"""Score every user with ONNX Runtime: top-N unseen active items per user.

Users with history go through the fused ``scorer.onnx`` graph in batches; users with
no history among the model's items get the most popular active items (reason
``popular``). Output: Parquet parts under ``scores/<run_id>/shard-<i>-of-<n>/``,
written to a temporary folder and renamed when the shard is complete. Sharding is by
a stable hash of the user id, so shards can run as separate (mapped) tasks.

Every batch is checked as it is made (no item twice in a user's list; ranks run
1..n), and each part's SHA-256 and size are taken from the bytes as they are written
and listed in the shard's ``_SUCCESS.json``: publish never reads a part twice.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import shutil
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from nightrec import db, ranking, registry, rules
from nightrec.config import ContractError, ScoreConfig, Settings, cuda_in_onnxruntime
from nightrec.model import histories, padded_sets, plan_batches
from nightrec.publish import RUN_COLUMNS, run_columns  # noqa: F401  (score.RUN_COLUMNS)
from nightrec.ranking import RankConfig
from nightrec.rules import RulesConfig
from nightrec.train import load_sequences

log = logging.getLogger(__name__)

BATCHES_PER_PART = 16  # ~1.6M rows per Parquet part at the defaults
OVERLAP = 2  # batches read ahead of the scorer, and waiting behind it to be written
SCHEMA = {
    "user_id": pl.Utf8,
    "rank": pl.Int32,
    "item_id": pl.Utf8,
    "score": pl.Float32,
    "reason": pl.Utf8,
    "because_item_id": pl.Utf8,
}


def _with_run_columns(frame: pl.DataFrame, columns: dict | None) -> pl.DataFrame:
    if columns is None:
        return frame
    return frame.with_columns(
        pl.lit(columns["model_version"], dtype=pl.Utf8).alias("model_version"),
        pl.lit(columns["run_id"], dtype=pl.Utf8).alias("run_id"),
        pl.lit(dt.datetime.fromisoformat(columns["generated_at"]))
        .cast(pl.Datetime("us", "UTC"))
        .alias("generated_at"),
    )


def choose_providers(choice: str) -> list[str]:
    """CUDA first where ONNX Runtime's CUDA provider runs here (``cuda_in_onnxruntime``)
    and it is not forced off, then CPU."""
    import onnxruntime as ort

    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_in_onnxruntime():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "cuda":
        available = ort.get_available_providers()
        why = "cannot start here" if "CUDAExecutionProvider" in available else "is not offered"
        raise ContractError(
            f"provider 'cuda' asked for, but ONNX Runtime's CUDA provider {why} "
            f"(onnxruntime {ort.__version__} offers {available})"
        )
    return ["CPUExecutionProvider"]


def kernel_workers(cpus: int, cfg: ScoreConfig, n_index: int, int8: bool) -> int:
    """Workers of the top-N kernel: one per CPU, as many as fit ``cfg.work_memory_mb``.

    Each holds a [model_batch, items] float32 score matrix (scattered in place), the int8
    scorer's part an int32 one of the same size beside it; at least one."""
    each = cfg.model_batch * n_index * 4 * (2 if int8 else 1)
    return max(1, min(cpus, cfg.work_memory_mb * 2**20 // each))


def open_scorer(path: Path, providers: list[str], topk: str, threads: int, rows: int):
    """The session ``score`` calls: on the CPU with ``topk`` "kernel", a
    ``topk.SplitScorer`` of ``threads`` workers and parts of ``rows`` users; else, or
    where the graph cannot be split or Numba is missing (with a warning), ONNX Runtime on
    the file as it is. Returns (session, "kernel" | "graph")."""
    import onnxruntime as ort

    if topk == "kernel" and providers[0] == "CPUExecutionProvider":
        try:
            from nightrec import topk as kernel  # Numba: only where the kernel runs
        except ImportError as e:
            log.warning("score: no top-N kernel (%s): the fused graph serves", e)
        else:
            try:
                return kernel.SplitScorer(path, threads, rows), "kernel"
            except kernel.Unsplittable as e:
                log.warning("score: %s cannot use the top-N kernel (%s): fused graph", path.name, e)
    return ort.InferenceSession(str(path), ort.SessionOptions(), providers=providers), "graph"


def shard_dir(settings: Settings, run_id: str, shard: int, num_shards: int) -> Path:
    return settings.scores_dir(run_id) / f"shard-{shard:05d}-of-{num_shards:05d}"


def in_shard(user_ids: pl.Series, shard: int, num_shards: int) -> np.ndarray:
    if num_shards == 1:
        return np.ones(len(user_ids), dtype=bool)
    crc = np.fromiter(
        (zlib.crc32(u.encode()) for u in user_ids), dtype=np.int64, count=len(user_ids)
    )
    return crc % num_shards == shard


def score(
    settings: Settings,
    snapshot_dir: Path,
    run_id: str,
    cfg: ScoreConfig = ScoreConfig(),
    model_version: str | None = None,
    rank: RankConfig | None = None,
    rule_cfg: RulesConfig | None = None,
) -> dict:
    """Score the users of one shard with ``model_version`` (default: the promoted one).

    Returns counts and the provider that ran. A backfill run passes the model it trained
    for its own date, which need not be the live one. ``rank``: the ranking layer
    (``ranking``; None or the defaults: off, the scorer's top N as it comes). Shard 0
    also writes the model's similar items (``ScoreConfig.similar_k`` per active item).
    ``rule_cfg``: the business rules (``rules``; None or the defaults: none, today's lists);
    items a global rule removes are left out of the similar items too.
    """
    rank_cfg = rank or RankConfig()
    rule_cfg = rule_cfg or RulesConfig()
    from nightrec.workers import cpus

    started = time.perf_counter()
    version_dir, manifest = registry.load_version(settings.models_dir, model_version)
    model_items = pl.read_parquet(version_dir / "items.parquet")  # item_id, idx
    n_index = model_items.height + 1
    catalog = pl.read_parquet(snapshot_dir / "items.parquet", columns=["item_id", "active"])
    active = model_items.join(catalog.filter("active"), on="item_id", how="semi")
    bias = np.full(n_index, -np.inf, dtype=np.float32)
    bias[active["idx"].to_numpy()] = 0.0  # inactive, removed and padding items never ranked
    item_ids = pl.concat([pl.Series([None], dtype=pl.Utf8), model_items["item_id"]])
    k = min(cfg.top_n, len(active))
    layer = None
    k_model = k  # what the scorer is asked for: more when the ranking layer re-ranks
    if rank_cfg.active:
        cutoff = _cutoff_us(snapshot_dir)
        layer = ranking.Layer.from_snapshot(snapshot_dir, model_items, rank_cfg, cutoff)
        k_model = min(rank_cfg.candidates * k, len(active))

    seqs = load_sequences(snapshot_dir, model_items)
    warm = pl.DataFrame({"user_id": seqs.user_ids, "u": np.arange(len(seqs.user_ids))})
    users = pl.read_parquet(snapshot_dir / "users.parquet")["user_id"]
    users = pl.concat([users, warm["user_id"]]).unique().sort()
    users = users.filter(in_shard(users, cfg.shard, cfg.num_shards))
    warm = warm.filter(pl.col("user_id").is_in(users.implode()))
    cold = users.filter(~users.is_in(warm["user_id"].implode()))
    applied = None
    if rule_cfg.active:
        cutoff_at = dt.datetime.fromtimestamp(_cutoff_us(snapshot_dir) / 1e6, dt.UTC)
        applied = rules.apply(snapshot_dir, users, rule_cfg, cutoff_at)
        gone = model_items.join(applied.removed, on="item_id", how="semi")["idx"].to_numpy()
        bias[gone] = -np.inf
        excl = rules.Exclusions.of(warm["user_id"], model_items, applied)
    else:  # today's exclude sets: every item of the user's history
        excl = rules.Exclusions(seqs.seq, seqs.starts, seqs.ends, n_index)

    providers = choose_providers(cfg.provider)
    # int8 only where its gate passed (checked with the other files by load_version)
    scorer = registry.scorer_file(version_dir, manifest, providers[0] == "CPUExecutionProvider")
    # on the CPU the top N is nightrec's kernel between two parts of the graph (``topk``)
    workers = kernel_workers(cpus(), cfg, n_index, scorer.name == registry.SCORER_INT8)
    sess, topk_mode = open_scorer(scorer, providers, cfg.topk, workers, cfg.model_batch)
    provider = sess.get_providers()[0]
    # users per ONNX Runtime call: on the CPU a cache-sized slice; a GPU takes the whole
    # scoring batch (``batch_size``: raise it to thousands there to fill the device)
    per_call = cfg.model_batch if provider == "CPUExecutionProvider" else cfg.batch_size
    log.info(
        "score: model %s (%s) on %s (top N: %s); %d users with history, %d cold, top %d of %d"
        " active items",
        manifest["version"],
        scorer.name,
        provider,
        topk_mode,
        warm.height,
        cold.len(),
        k,
        len(active),
    )

    snap_meta = snapshot_dir / "snapshot.json"
    as_of = json.loads(snap_meta.read_text()).get("as_of") if snap_meta.is_file() else None
    published = run_columns(manifest["version"], run_id, as_of)
    out = shard_dir(settings, run_id, cfg.shard, cfg.num_shards)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    max_history = int(manifest["config"]["max_history"])
    u_all = warm["u"].to_numpy()
    # excluded items per user (rules: rows in warm order; else rows of seqs): the exclude width
    rows_all = np.arange(len(u_all)) if applied is not None else u_all
    widths = excl.widths()[rows_all]

    def read(batch: slice) -> tuple:
        """Host work before the scorer: one batch's histories and seen items."""
        u = u_all[batch]
        starts, ends = seqs.starts[u], seqs.ends[u]
        hist = histories(seqs.seq, starts, ends, max_history)
        strength = seqs.strengths(starts, ends, max_history)
        seen = (
            padded_sets(seqs.seq, starts, ends) if applied is None else excl.padded(rows_all[batch])
        )
        return batch, hist, strength, seen

    sink = _PartSink(tmp, published, warm["user_id"], item_ids, k, layer, cfg.shard)
    batch_size = cfg.batch_size
    if topk_mode == "kernel":  # a part of model_batch users for each worker in every batch
        batch_size = max(batch_size, sess.threads * cfg.model_batch)
    batches = plan_batches(widths, batch_size, cfg.max_exclude_cells)
    t_model = t_read = t_write = 0.0
    # on a GPU, host work overlaps the scorer: the next batches are read in one thread and
    # the last ones turned into rows and Parquet in another while the device scores (ONNX
    # Runtime releases the GIL); at most OVERLAP batches wait on either side, so memory
    # stays flat. On the CPU the threads would take cores from ONNX Runtime's own (at 1M x
    # 100k, 5% slower on 2 cores): by default (``ScoreConfig.overlap``) the same steps run
    # in order there
    overlap = cfg.overlap == "on" or (cfg.overlap == "auto" and provider != "CPUExecutionProvider")
    with (
        _executor(overlap, "score-read") as reader,
        _executor(overlap, "score-write") as writer,
        contextlib.closing(sess) if hasattr(sess, "close") else contextlib.nullcontext(),
    ):
        ahead = collections.deque(reader.submit(read, b) for b in batches[:OVERLAP])
        behind: collections.deque = collections.deque()
        for i in range(len(batches)):
            t = time.perf_counter()
            batch, hist, strength, seen = ahead.popleft().result()
            t_read += time.perf_counter() - t
            if i + OVERLAP < len(batches):
                ahead.append(reader.submit(read, batches[i + OVERLAP]))
            t = time.perf_counter()
            outs = run_scorer(
                sess, hist, seen, widths[batch], bias, max(k_model, 1), per_call, strength
            )
            t_model += time.perf_counter() - t
            behind.append(writer.submit(sink.add, batch, hist, outs))
            t = time.perf_counter()
            while len(behind) > OVERLAP or (behind and behind[0].done()):
                behind.popleft().result()  # raises the writer's error here, in order
            t_write += time.perf_counter() - t
            if (i + 1) % BATCHES_PER_PART == 0:
                done = batch.stop
                log.info(
                    "score: %d/%d users (%.0f users/s)",
                    done,
                    len(u_all),
                    done / (time.perf_counter() - started),
                )
        t = time.perf_counter()
        while behind:
            behind.popleft().result()
        writer.submit(sink.flush).result()
        t_write += time.perf_counter() - t
    rows, parts, written, written_parts = sink.rows, sink.parts, sink.written, sink.listed
    if cold.len():
        popular = popular_for(cold, snapshot_dir, cfg, applied)
        written += popular["user_id"].n_unique()
        _check_frame(popular)
        rows += _write_part([popular], tmp, parts, written_parts, published)
        parts += 1
    similar = None
    if cfg.shard == 0:
        similar = write_similar(tmp, version_dir, manifest, bias, item_ids, cfg.similar_k)
    seconds = time.perf_counter() - started
    stats = {
        "run_id": run_id,
        "snapshot": str(snapshot_dir.resolve()),
        "model_version": manifest["version"],
        "provider": provider,
        "scorer": scorer.name,  # scorer_int8.onnx where the int8 gate passed (``quantize``)
        "topk": topk_mode,  # kernel: nightrec's top N after ONNX Runtime's product; graph: fused
        "topk_workers": sess.threads if topk_mode == "kernel" else None,
        "users": users.len(),
        "users_history": warm.height,
        "users_cold": cold.len(),
        "users_written": written,
        "users_empty": users.len() - written,  # nothing left to recommend (saw every item)
        "rows": rows,
        "top_n": cfg.top_n,
        "shard": cfg.shard,
        "num_shards": cfg.num_shards,
        "seconds": round(seconds, 3),
        "model_seconds": round(t_model, 3),
        # the scorer waiting on host work (overlapped): reading histories, writing rows
        "overlapped": overlap,
        "read_wait_seconds": round(t_read, 3),
        "write_wait_seconds": round(t_write, 3),
        "parts": written_parts,  # name, rows, bytes, sha256: publish trusts these
        "run_columns": published,  # the constant columns in every part (publish links them)
        "checked": "no item twice per user, ranks 1..n",
        "ranking": dataclasses.asdict(rank_cfg) if rank_cfg.active else None,
        # the rules that applied and the (user, item) pairs each removed (consumables: put back)
        "rules": None if applied is None else applied.counts,
        "similar": similar,  # shard 0: the similar-items file, listed like the parts
    }
    (tmp / "_SUCCESS.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info(
        "score: %d users (%d cold) -> %d rows on %s in %.1fs (%.0f users/s); rules: %s",
        users.len(),
        cold.len(),
        rows,
        provider,
        seconds,
        users.len() / max(seconds, 1e-9),
        "none" if applied is None else applied.counts,
    )
    return stats


def run_scorer(
    sess,
    hist: np.ndarray,
    seen: np.ndarray,
    widths: np.ndarray,
    bias: np.ndarray,
    k: int,
    chunk: int,
    strength: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scorer over ``hist`` [B, L] (strength codes beside it: ``strength``, None: 0) in
    calls of ``chunk`` users; outputs [B, k] each.

    Each call's seen-items matrix is cut to its own widest user (``widths`` [B]).
    ``bias`` [M + 1] holds 0 or -inf only: the scorer drops the -inf items, it adds nothing.
    """
    if not np.all((bias == 0) | (bias == -np.inf)):
        raise ValueError("item bias must be 0 (rankable) or -inf (never ranked)")
    if getattr(sess, "takes_whole_batches", False):  # topk.SplitScorer: parts of its own
        chunk = max(len(hist), 1)
    outs = []
    for lo in range(0, len(hist), chunk):
        hi = min(lo + chunk, len(hist))
        width = max(int(widths[lo:hi].max()), 1)
        part = np.ascontiguousarray(seen[lo:hi, :width])
        codes = None if strength is None else strength[lo:hi]
        inputs = registry.scorer_inputs(hist[lo:hi], part, bias, k, codes)
        outs.append(sess.run(None, registry.feed(sess, inputs)))
    if len(outs) == 1:
        return tuple(outs[0])  # type: ignore[return-value]
    return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))  # type: ignore[return-value]


def _cutoff_us(snapshot_dir: Path) -> int:
    """The snapshot's cut-off in µs (its latest interaction when not recorded)."""
    meta = snapshot_dir / "snapshot.json"
    cutoff = json.loads(meta.read_text()).get("cutoff") if meta.is_file() else None
    if cutoff:
        return int(dt.datetime.fromisoformat(cutoff).timestamp() * 1_000_000)
    last = pl.read_parquet(snapshot_dir / "interactions.parquet", columns=["last_ts"])
    return int(last["last_ts"].dt.epoch("us").max() or 0) + 1  # type: ignore[operator, arg-type]


SIMILAR_FILE = "similar.parquet"
SIMILAR_SCHEMA = {
    "item_id": pl.Utf8,
    "rank": pl.Int32,
    "similar_item_id": pl.Utf8,
    "score": pl.Float32,
}


def item_vectors(version_dir: Path, manifest: dict) -> np.ndarray:
    """The model version's item tower vectors [M + 1, d] (row 0 padding), from its
    ``encoder.pt`` and the training config its manifest records."""
    import torch

    from nightrec.config import TrainConfig
    from nightrec.model import Encoder

    state = torch.load(version_dir / "encoder.pt", weights_only=True)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    tcfg = TrainConfig(**{n: v for n, v in manifest["config"].items() if n in known})
    with torch.inference_mode():
        return Encoder.from_state(state, tcfg).item_vectors().numpy()


def write_similar(
    folder: Path, version_dir: Path, manifest: dict, bias: np.ndarray, item_ids: pl.Series, k: int
) -> dict:
    """The model's ``k`` most similar active items of every active item (``ranking``),
    written to ``folder/similar.parquet``; returns its listing (name, rows, bytes, sha256)."""
    t0 = time.perf_counter()
    active = np.isfinite(bias)
    frame = pl.DataFrame(schema=SIMILAR_SCHEMA)
    if k > 0 and active.sum() > 1:
        vectors = item_vectors(version_dir, manifest)
        items, sim_i, sim_s = ranking.similar_items(vectors, active, k)
        keep = sim_i >= 0
        row = np.repeat(np.arange(len(items)), sim_i.shape[1]).reshape(sim_i.shape)[keep]
        frame = pl.DataFrame(
            {
                "item_id": item_ids.gather(items[row]),
                "rank": (np.cumsum(keep, axis=1)[keep]).astype(np.int32),
                "similar_item_id": item_ids.gather(sim_i[keep]),
                "score": sim_s[keep].astype(np.float32),
            },
            schema=SIMILAR_SCHEMA,
        )
    listed: list[dict] = []
    _write_part([frame], folder, 0, listed, name=SIMILAR_FILE)
    log.info(
        "score: %d similar items for %d active items in %.1fs",
        frame.height,
        int(active.sum()),
        time.perf_counter() - t0,
    )
    return listed[0]


def _executor(threaded: bool, name: str):
    """One worker thread (``threaded``), or the caller's thread: each call runs as it is
    submitted, its result or error in the returned future."""
    return ThreadPoolExecutor(1, thread_name_prefix=name) if threaded else _InOrder()


class _InOrder:
    """The ``ThreadPoolExecutor`` calls ``score`` makes, run at once in the caller's thread."""

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # raised where the result is asked for, as a thread's
            done.set_exception(exc)
        return done

    def __enter__(self) -> _InOrder:
        return self

    def __exit__(self, *exc) -> None:
        return None


class _PartSink:
    """Scored batches in, checked rows out: Parquet parts of ``BATCHES_PER_PART`` batches
    in ``folder``, each listed (name, rows, bytes, sha256) in ``listed``. Called from one
    thread at a time, batches in scoring order."""

    def __init__(
        self,
        folder: Path,
        columns: dict | None,
        user_ids: pl.Series,
        item_ids: pl.Series,
        k: int,
        layer,
        shard: int,
    ) -> None:
        self.folder, self.columns, self.user_ids, self.item_ids = (
            folder,
            columns,
            user_ids,
            item_ids,
        )
        self.k, self.layer, self.shard = k, layer, shard
        self.pending: list[pl.DataFrame] = []
        self.listed: list[dict] = []
        self.rows = self.parts = 0
        self.written = 0  # users given at least one item; with the "empty" ones, every user

    def add(self, batch: slice, hist: np.ndarray, outs: tuple) -> None:
        top_s, top_i, because = outs
        k, lo = self.k, batch.start
        if self.layer is None:
            keep = np.isfinite(top_s)  # fewer unseen active items than k: shorter list
            reason = None
        else:
            order, top_s, trending, keep = ranking.rerank(self.layer, top_i, top_s, k)
            top_i = np.take_along_axis(top_i, order, axis=1)
            because = np.take_along_axis(because, order, axis=1)
            reason = ranking.reasons(trending, because, hist[:, -ranking.RECENT :])
        _check_lists(top_i, keep, self.user_ids[lo], self.shard)
        self.written += int(keep.any(axis=1).sum())
        n = batch.stop - lo
        row_user = np.repeat(np.arange(n), k).reshape(n, k)[keep]
        rank = (np.cumsum(keep, axis=1))[keep]
        self.pending.append(
            pl.DataFrame(
                {
                    "user_id": self.user_ids.gather(lo + row_user),
                    "rank": rank.astype(np.int32),
                    "item_id": self.item_ids.gather(top_i[keep]),
                    "score": top_s[keep].astype(np.float32),
                    "reason": pl.repeat("history", int(keep.sum()), eager=True, dtype=pl.Utf8)
                    if reason is None
                    else pl.Series(reason[keep].tolist(), dtype=pl.Utf8),
                    "because_item_id": self.item_ids.gather(because[keep]),
                },
                schema=SCHEMA,
            )
        )
        if len(self.pending) == BATCHES_PER_PART:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.rows += _write_part(
                self.pending, self.folder, self.parts, self.listed, self.columns
            )
            self.parts, self.pending = self.parts + 1, []


def _write_part(
    frames: list[pl.DataFrame],
    folder: Path,
    n: int,
    listed: list[dict],
    columns: dict | None = None,
    name: str = "",
) -> int:
    """Write one Parquet part (with the run's constant ``columns``, ``run_columns``); its
    name, rows, size and SHA-256 are appended to ``listed``."""
    frame = _with_run_columns(pl.concat(frames), columns)
    buf = io.BytesIO()
    frame.write_parquet(buf)
    data = buf.getbuffer()
    name = name or f"part-{n:05d}.parquet"
    with open(folder / name, "wb") as f:
        f.write(data)
    listed.append(
        {
            "name": name,
            "rows": frame.height,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    )
    return frame.height


def _check_lists(top_i: np.ndarray, keep: np.ndarray, first_user: object, shard: int) -> None:
    """No item twice in a list ([B, K] indices, ``keep`` the published cells).

    Ranks are the running count of kept cells, so they run 1..n by construction.
    """
    marked = np.where(keep, top_i, -1 - np.arange(top_i.shape[1]))  # dropped cells differ
    srt = np.sort(marked, axis=1)
    bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if len(bad):
        raise ContractError(
            f"score shard {shard}: a list repeats an item (batch starting at user "
            f"{first_user!r}, row {int(bad[0])}): not written"
        )


def _check_frame(frame: pl.DataFrame) -> None:
    """The same checks on rows made in SQL (popular lists): unique items, ranks 1..n."""
    if frame.is_empty():
        return
    dup = frame.select(pl.struct("user_id", "item_id").is_duplicated().any()).item()
    rank = pl.col("rank")
    gaps = (
        frame.group_by("user_id")
        .agg(n=pl.len(), lo=rank.min(), hi=rank.max(), u=rank.n_unique())
        .filter((pl.col("lo") != 1) | (pl.col("hi") != pl.col("n")) | (pl.col("u") != pl.col("n")))
    )
    if dup or gaps.height:
        raise ContractError(
            f"popular lists fail checks (duplicate item: {dup}; users with rank gaps: "
            f"{gaps['user_id'].head(3).to_list()}): not written"
        )


def popular_for(
    cold: pl.Series, snapshot_dir: Path, cfg: ScoreConfig, applied: rules.Applied | None = None
) -> pl.DataFrame:
    """Top-N popular active items for users without usable history, minus what they saw.

    ``applied``: the business rules' sets (``rules.apply``): the exclude sets replace what
    they saw, globally removed items are left out, and users with an inclusion list get
    the most popular items of their list.
    """
    import duckdb

    if applied is None:
        seen = pl.read_parquet(
            snapshot_dir / "interactions.parquet", columns=["user_id", "item_id"]
        )
    else:
        seen = applied.exclude
    seen = seen.join(pl.DataFrame({"user_id": cold}), on="user_id", how="semi")
    most_seen = int(seen.group_by("user_id").len()["len"].max() or 0)  # type: ignore[arg-type]
    removed = applied.removed.select("item_id") if applied is not None else None
    listed = pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8})
    if applied is not None:
        listed = applied.include.join(pl.DataFrame({"user_id": cold}), on="user_id", how="semi")
    limit = cfg.top_n + most_seen + (removed.height if removed is not None else 0)
    with duckdb.connect() as con:
        popular = db.frame(
            con,
            "popular_items",
            {
                "interactions": str(snapshot_dir / "interactions.parquet"),
                "items": str(snapshot_dir / "items.parquet"),
                "window_days": cfg.popular_window_days,
                # a user's inclusion list may reach anywhere in the popularity order
                "limit": limit if listed.is_empty() else 2**62,
            },
        )
    if removed is not None:
        popular = popular.join(removed, on="item_id", how="anti", maintain_order="left")
    popular = popular.with_row_index("pos")
    plain = pl.DataFrame({"user_id": cold}).join(listed, on="user_id", how="anti")
    candidates = pl.concat(
        [
            plain.join(popular.head(limit), how="cross"),
            listed.join(popular, on="item_id", how="inner").select("user_id", *popular.columns),
        ]
    )
    recs = (
        candidates.join(seen, on=["user_id", "item_id"], how="anti")
        .sort(["user_id", "pos"])
        .with_columns(pl.int_range(1, pl.len() + 1).over("user_id").alias("rank"))
        .filter(pl.col("rank") <= cfg.top_n)
    )
    return recs.select(
        "user_id",
        pl.col("rank").cast(pl.Int32),
        "item_id",
        pl.col("score").cast(pl.Float32),
        pl.lit("popular").alias("reason"),
        pl.lit(None, dtype=pl.Utf8).alias("because_item_id"),
    )
