"""Scoring speed against its floor and a peer: the same users and items, one run.

Per scale (users x items, d 64, top N 100), each part in its own process so that its
peak RSS is its own:

- **floor**: numpy float32 ``users @ items.T`` per batch and nothing else (no masking,
  no top-N): what any exact scorer over the full catalog must at least do; at the best
  of several batch sizes (64 to 1024 users: small ones keep the product in cache).
- **ORT floor**: the same product through an ONNX Runtime MatMul (MLAS, the GEMM the
  scorer itself runs), one session on every core or one single-threaded session per core
  side by side, at its best: on this machine faster than NumPy's, so the stricter floor.
- **faiss**: faiss-cpu ``IndexFlatIP`` (exact inner product), asked for N + E per batch
  (E = the batch's widest seen set) so that N unseen items remain after dropping each
  user's seen items: exact top-N with filtering, the usual way to use it.
- **torch-cuda** (only when torch sees a GPU): matmul + seen mask + topk on the device.
- **nightrec core**: ``scorer.onnx`` on the same batches, opened and called as ``nightrec
  score`` does (``ScoreConfig.model_batch`` users per call): user encoding, inner
  products, neighbour terms, masking, top-N and the "because" item. On the CPU the top N is
  nightrec's kernel between two parts of the graph run by ONNX Runtime (``topk``), with one
  single-threaded worker per core.
- **nightrec core graph**: the same, all in the fused graph through ONNX Runtime, as
  before the kernel (``ScoreConfig.topk`` "graph"; how CUDA runs it).
- **nightrec core int8** (CPU only): the same, through the int8 scorer the CPU serves
  where its gate passed (``quantize.quantize``; built by default where the item matrix
  has >= 1M cells), with the mean overlap of its top N with the fp32 scorer's on the same
  users. Not exact, so not what the floor ratio of the exact core is about.
- **nightrec core fp16** (CUDA only): the same, through the half-precision scorer that
  CUDA serves where its gate passed (``quantize.half``), with the mean overlap of its
  top N with the fp32 scorer's on the same users.
- **nightrec end to end**: ``nightrec score`` on a snapshot: histories read from
  Parquet, the scorer, top-N rows written as Parquet parts.
- **similar items**: the model's ``ScoreConfig.similar_k`` most similar items of every
  item (``ranking.similar_items``, as ``nightrec score`` writes them): on the CPU ONNX
  Runtime's product and the top-N kernel on one worker per core, beside its PyTorch path
  (``kernel=False``: PyTorch's product and ``top_k_rows``, what served before), with
  whether both gave the same lists.
- **publish** of those rows (``nightrec publish``: the serving version, its checks, the
  catalog) beside a baseline, DuckDB copying the same parts into one Parquet file (one
  pass over the rows: what publish did before it took the parts as they are).

The floor, faiss and the core run on the first ``--sample`` users (users/s does not
depend on how many); the end-to-end step scores every user. The model is an untrained
encoder over random text vectors exported like a trained one: speed does not depend on
the weights. ``--pair``: the model is a pair of two such encoders, as training serves by
default (``TrainConfig.ensemble``): vectors 2 x d wide, so the floor and faiss multiply
2 x d too.

    python bench/score.py                                 # 100k x 50k and 1M x 100k
    python bench/score.py --scales 100000:50000 --sample 50000
    python bench/score.py --scales 100000:50000 --pair    # the served pair (2 x d)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIM, TOP_N, TEXT_DIM, MAX_HISTORY = 64, 100, 32, 20
BATCH = int(os.environ.get("NIGHTREC_BENCH_BATCH", "1024"))  # users per batch (score's batch_size)
FLOOR_BATCHES = (64, 128, 256, 1024)
VERSION = "vbench-score"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def prepare(users: int, items: int, work: Path, pair: bool = False) -> None:
    """A snapshot (histories of 1..60 items, mean ~8) and an exported model in ``work``."""
    import polars as pl
    import torch

    from nightrec import fusion, registry
    from nightrec.config import Settings, TrainConfig
    from nightrec.model import Encoder
    from nightrec.train import Sequences, load_sequences, training_examples

    snap = work / "snapshot"
    if (snap / "done").is_file():
        return
    snap.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.geometric(1 / 8, users), 1, 60)
    owner = np.repeat(np.arange(users), lengths)
    item = rng.integers(1, items + 1, len(owner))
    ids = pl.Series(np.arange(1, items + 1)).cast(pl.Utf8).str.zfill(7)
    pl.DataFrame(
        {"item_id": "i" + ids, "title": "t", "category": "c", "active": True}
    ).write_parquet(snap / "items.parquet")
    uid = "u" + pl.Series(np.arange(users)).cast(pl.Utf8).str.zfill(8)
    pl.DataFrame({"user_id": uid}).write_parquet(snap / "users.parquet")
    inter = pl.DataFrame(
        {
            "user_id": uid.gather(owner),
            "item_id": "i" + pl.Series(item).cast(pl.Utf8).str.zfill(7),
            "first_ts": pl.Series(np.arange(len(owner)) * 1_000_000).cast(pl.Datetime("us", "UTC")),
        }
    ).unique(["user_id", "item_id"], keep="first", maintain_order=True)
    inter.write_parquet(snap / "interactions.parquet")
    (snap / "snapshot.json").write_text(json.dumps({"as_of": "2026-11-01"}))

    cfg = TrainConfig(dim=DIM, max_history=MAX_HISTORY)
    torch.manual_seed(0)
    text = torch.randn(items + 1, TEXT_DIM)
    text[0] = 0.0
    model, *second = (Encoder(text, cfg).eval() for _ in range(1 + pair))
    with torch.no_grad():
        for member in (model, *second):
            member.item_id.weight.normal_(0, 0.5)
    if second:
        model.pair_with(second[0])
    # neighbour tables as training counts them (from the first 200k users' histories), so
    # that the graph has the scatter-add a trained model usually has
    seqs = load_sequences(
        snap, pl.DataFrame({"item_id": "i" + ids, "idx": np.arange(1, items + 1)})
    )
    some = min(len(seqs.ends), 200_000)
    seqs = Sequences(seqs.user_ids[:some], seqs.seq, seqs.starts[:some], seqs.ends[:some])
    hist, target, _ = training_examples(seqs, cfg)
    model.set_neighbours(fusion.tables(hist, target, items + 1, cfg.neighbours), 1.0, 1.0)
    settings = Settings.from_env(home=work / "home", models_dir=work / "models")
    index = pl.DataFrame({"item_id": "i" + ids, "idx": np.arange(1, items + 1)})
    example = np.tile(np.arange(1, MAX_HISTORY + 1), (8, 1)).astype(np.int64)
    # held-out examples: where ONNX Runtime has CUDA, the fp16 scorer is built and gated on
    # them (``Fp16Config``, auto), and the end-to-end part scores with it if it passed
    held = (hist[:4096], target[:4096], np.zeros_like(hist[:4096]))
    registry.export(
        model, settings.models_dir, VERSION, index, dataclasses.asdict(cfg), {}, example,
        held_out=held,
    )  # fmt: skip
    registry.promote(settings.models_dir, VERSION)
    (snap / "done").write_text("ok")


def _batches(work: Path, sample: int):
    """The first ``sample`` users' (histories, seen sets) in scoring batches, and the items."""
    import polars as pl

    from nightrec.model import histories, padded_sets
    from nightrec.train import load_sequences

    index = pl.read_parquet(work / "models" / VERSION / "items.parquet")
    seqs = load_sequences(work / "snapshot", index)
    n = min(sample, len(seqs.user_ids))
    out = []
    for lo in range(0, n, BATCH):
        u = np.arange(lo, min(n, lo + BATCH))
        s, e = seqs.starts[u], seqs.ends[u]
        out.append((histories(seqs.seq, s, e, MAX_HISTORY), padded_sets(seqs.seq, s, e)))
    return out, n, index.height


def run_floor_and_peers(work: Path, sample: int, which: str, provider: str = "cpu") -> dict:
    import torch

    from nightrec import registry
    from nightrec.config import ScoreConfig, TrainConfig
    from nightrec.model import Encoder, TopNScorer
    from nightrec.score import choose_providers, open_scorer, run_scorer
    from nightrec.workers import cpus

    batches, n, m = _batches(work, sample)
    extra: dict = {}
    folder = work / "models" / VERSION
    enc = Encoder.from_state(
        torch.load(folder / "encoder.pt"), TrainConfig(dim=DIM, max_history=MAX_HISTORY)
    )
    scorer = TopNScorer(enc).eval()
    items = scorer.item_matrix[: scorer.n_index].numpy()  # [M + 1, d]
    with torch.inference_mode():  # the same user vectors for the floor and the peers
        users = [
            enc.user_vectors(torch.from_numpy(h), scorer.item_matrix).numpy() for h, _ in batches
        ]
    bias = np.zeros(m + 1, dtype=np.float32)
    bias[0] = -np.inf
    t = time.perf_counter()
    if which == "floor":  # at its best batch size: small ones keep the product in cache
        items_t = np.ascontiguousarray(items.T)
        flat = np.concatenate(users)
        best = None
        for size in FLOOR_BATCHES:
            t = time.perf_counter()
            for lo in range(0, len(flat), size):
                flat[lo : lo + size] @ items_t
            took = time.perf_counter() - t
            if best is None or took < best[0]:
                best = (took, size)
        assert best is not None
        return {
            "which": which,
            "users": n,
            "seconds": best[0],
            "users_per_s": n / best[0],
            "batch": best[1],
            "peak_gb": peak_rss_gb(),
        }
    elif which == "floor-ort":  # ONNX Runtime's own GEMM (MLAS) alone, as the scorer runs it
        return _ort_floor(items, np.concatenate(users), n)
    elif which == "faiss":
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index = faiss.IndexFlatIP(items.shape[1])
        index.add(np.ascontiguousarray(items[1:]))  # faiss id j = item index j + 1
        t = time.perf_counter()
        for u, (_, seen) in zip(users, batches, strict=True):
            _, ids = index.search(np.ascontiguousarray(u), TOP_N + seen.shape[1])
            ids = ids + 1
            drop = (ids[:, :, None] == seen[:, None, :]).any(-1)  # [B, N + E] seen items
            order = np.argsort(drop, axis=1, kind="stable")[:, :TOP_N]
            np.take_along_axis(ids, order, axis=1)
    elif which in ("core", "core-graph"):
        # as `nightrec score` opens it: on the CPU the top-N kernel between two parts of the
        # graph (``topk``); "core-graph": the whole fused graph in ONNX Runtime (CUDA's way)
        sess, extra["topk"] = open_scorer(
            folder / registry.SCORER,
            choose_providers(provider),
            "kernel" if which == "core" else "graph",
            cpus(),
            ScoreConfig().model_batch,
        )
        cpu = sess.get_providers()[0] == "CPUExecutionProvider"
        chunk = ScoreConfig().model_batch if cpu else BATCH  # as `nightrec score` calls it
        run_scorer(sess, *batches[0][:2], (batches[0][1] > 0).sum(1), bias, TOP_N, chunk)  # warm
        t = time.perf_counter()
        for h, seen in batches:
            run_scorer(sess, h, seen, (seen > 0).sum(1), bias, TOP_N, chunk)
    elif which in ("core-fp16", "core-int8"):  # the scorers CUDA / the CPU may serve
        from nightrec import quantize
        from nightrec.config import Int8Config

        providers = choose_providers(provider)
        cpu = providers[0] == "CPUExecutionProvider"
        if which == "core-fp16" and cpu:
            return {"which": which, "skipped": "served on CUDA only (no CUDA provider here)"}
        if which == "core-int8" and not cpu:
            return {"which": which, "skipped": "served on the CPU only"}
        path = work / f"scorer_{which.removeprefix('core-')}.onnx"
        if not path.is_file() and which == "core-fp16":
            quantize.half(folder / registry.SCORER, path)
        if not path.is_file() and which == "core-int8":
            quantize.quantize(folder / registry.SCORER, path, Int8Config(enabled="on"))
        rows = ScoreConfig().model_batch
        sess, extra["topk"] = open_scorer(path, providers, "kernel", cpus(), rows)  # as served
        full, _ = open_scorer(folder / registry.SCORER, providers, "kernel", cpus(), rows)
        chunk = ScoreConfig().model_batch if cpu else BATCH  # as `nightrec score` calls it
        run_scorer(sess, *batches[0][:2], (batches[0][1] > 0).sum(1), bias, TOP_N, chunk)  # warm
        t = time.perf_counter()
        lists = [
            run_scorer(sess, h, seen, (seen > 0).sum(1), bias, TOP_N, chunk) for h, seen in batches
        ]
        took = time.perf_counter() - t
        same = []
        for (h, seen), got in zip(batches, lists, strict=True):
            want = run_scorer(full, h, seen, (seen > 0).sum(1), bias, TOP_N, chunk)[1]
            same += [len(set(a) & set(b)) / TOP_N for a, b in zip(got[1], want, strict=True)]
        extra["overlap"] = float(np.mean(same))  # of fp32's top N, on the same provider
        t = time.perf_counter() - took  # the timed pass alone
    elif which == "torch-cuda":
        if not torch.cuda.is_available():
            return {"which": which, "skipped": "no CUDA device"}
        dev = torch.device("cuda")
        it = torch.from_numpy(items).to(dev)
        gpu = [
            (torch.from_numpy(u).to(dev), torch.from_numpy(s).to(dev))
            for u, (_, s) in zip(users, batches, strict=True)
        ]
        torch.cuda.synchronize()
        t = time.perf_counter()
        for u, seen in gpu:
            s = (u @ it.T).scatter_(1, seen, -torch.inf)
            s[:, 0] = -torch.inf
            torch.topk(s, TOP_N, dim=1)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {
        "which": which,
        "users": n,
        "seconds": seconds,
        "users_per_s": n / seconds,
        "peak_gb": peak_rss_gb(),
        **({"provider": sess.get_providers()[0]} if which.startswith("core") else {}),
        **extra,
    }


def _ort_floor(items: np.ndarray, flat: np.ndarray, n: int) -> dict:
    """``users @ items.T`` through an ONNX Runtime MatMul and nothing else, the way the
    scorer multiplies: one session on every core, and one single-threaded session per core
    side by side (as ``topk.SplitScorer``'s workers); the best of both and of the batch
    sizes. MLAS beats NumPy's BLAS here, so this is the stricter floor."""
    import concurrent.futures

    import onnx
    import onnxruntime as ort

    from nightrec.topk import matmul_model
    from nightrec.workers import cpus

    model = matmul_model(np.ascontiguousarray(items.T))  # input "rows", output "sims"
    onnx.checker.check_model(model)
    best = None
    for workers in (1, cpus()):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 0 if workers == 1 else 1  # 0: every core
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        pool = concurrent.futures.ThreadPoolExecutor(workers)
        for size in FLOOR_BATCHES:
            chunks = [flat[lo : lo + size] for lo in range(0, len(flat), size)]
            sess.run(None, {"rows": chunks[0]})  # warm

            def one(w: int, sess=sess, chunks=chunks, workers=workers) -> None:
                for u in chunks[w::workers]:  # each output dropped at once: memory flat
                    sess.run(None, {"rows": u})

            t = time.perf_counter()
            list(pool.map(one, range(workers)))
            took = time.perf_counter() - t
            if best is None or took < best[0]:
                best = (took, size, workers)
        pool.shutdown()
    assert best is not None
    return {
        "which": "floor-ort",
        "users": n,
        "seconds": best[0],
        "users_per_s": n / best[0],
        "batch": best[1],
        "workers": best[2],
        "peak_gb": peak_rss_gb(),
    }


def run_end_to_end(work: Path, provider: str = "cpu") -> dict:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from nightrec import score
    from nightrec.config import ScoreConfig, Settings

    settings = Settings.from_env(home=work / "home", models_dir=work / "models")
    t = time.perf_counter()
    stats = score.score(
        settings, work / "snapshot", "bench", ScoreConfig(top_n=TOP_N, provider=provider), VERSION
    )
    seconds = time.perf_counter() - t
    return {
        "which": "end-to-end",
        "users": stats["users"],
        "rows": stats["rows"],
        "seconds": seconds,
        "users_per_s": stats["users"] / seconds,
        "model_seconds": stats["model_seconds"],
        "peak_gb": peak_rss_gb(),
        "provider": stats["provider"],
    }


def run_publish(work: Path, which: str) -> dict:
    """Publish the end-to-end step's rows (``publish``), or the floor: DuckDB copying the
    same Parquet parts into one Parquet file and nothing else (``publish-floor``)."""
    import datetime as dt
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import duckdb

    from nightrec import publish
    from nightrec.config import Settings

    settings = Settings.from_env(home=work / "home", models_dir=work / "models")
    parts = sorted(str(p) for p in settings.scores_dir("bench").glob("shard-*/part-*.parquet"))
    shutil.rmtree(settings.serving, ignore_errors=True)
    out = work / "floor.parquet"
    t = time.perf_counter()
    if which == "publish":
        rows = publish.publish(settings, "bench", dt.date(2026, 11, 1))["rows"]
    else:
        with duckdb.connect() as con:
            con.execute(
                "copy (select * from read_parquet($p)) to $o (format parquet)",
                {"p": parts, "o": str(out)},
            )
            rows = con.execute("select count(*) from read_parquet($o)", {"o": str(out)}).fetchone()[
                0
            ]
    seconds = time.perf_counter() - t
    out.unlink(missing_ok=True)
    return {"which": which, "rows": rows, "seconds": seconds, "peak_gb": peak_rss_gb()}


PARTS = (
    "floor", "floor-ort", "faiss", "torch-cuda", "core", "core-graph", "core-int8", "core-fp16",
    "end-to-end",
)  # fmt: skip
PUBLISH = ("publish-floor", "publish")
SIMILAR = ("similar-torch", "similar")


def run_similar(work: Path, which: str) -> dict:
    """The model's similar items of every item (``similar``: as served; ``similar-torch``:
    the PyTorch path), timed after a warm-up on a slice; the lists' digest, to compare."""
    import hashlib

    from nightrec import ranking
    from nightrec.config import ScoreConfig
    from nightrec.score import item_vectors

    folder = work / "models" / VERSION
    vectors = item_vectors(folder, json.loads((folder / "manifest.json").read_text()))
    active = np.ones(len(vectors), bool)
    active[0] = False  # padding
    k, kernel = ScoreConfig().similar_k, which == "similar"
    ranking.similar_items(vectors[:2000], active[:2000], k, kernel=kernel)  # imports, Numba
    t = time.perf_counter()
    items, sim_i, sim_s = ranking.similar_items(vectors, active, k, kernel=kernel)
    seconds = time.perf_counter() - t
    return {
        "which": which,
        "items": len(items),
        "seconds": seconds,
        "lists": hashlib.sha256(sim_i.tobytes()).hexdigest()[:16],
        "cosines": hashlib.sha256(sim_s.tobytes()).hexdigest()[:16],
        "peak_gb": peak_rss_gb(),
    }


def child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=True
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def table(rows: list[dict]) -> str:
    head = (
        "| users x items | method | users timed | users/s | vs floor | vs ORT floor | peak RSS GB |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        floor = r["floor"]["users_per_s"]
        strict = r["floor-ort"].get("users_per_s")
        for part in PARTS:
            x = r[part]
            if "skipped" in x:
                lines.append(f"| {r['scale']} | {part} | – | {x['skipped']} | – | – | – |")
                continue
            ratio = floor / x["users_per_s"]
            where = (
                f" ({x['provider'].removesuffix('ExecutionProvider')})" if "provider" in x else ""
            )
            if "topk" in x:
                where += f", top N: {x['topk']}"
            if "overlap" in x:
                where += f", top-{TOP_N} overlap with fp32 {x['overlap']:.4f}"
            lines.append(
                f"| {r['scale']} | {part}{where} | {x['users']:,} | {x['users_per_s']:,.0f} | "
                f"{ratio:.2f}x slower | "
                + (f"{strict / x['users_per_s']:.2f}x slower" if strict else "–")
                + f" | {x['peak_gb']:.2f} |"
            )
    head = "| users x items | publish | rows | M rows/s | time vs DuckDB copy | peak RSS GB |"
    lines += ["", head, "|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r["publish-floor"]:
            continue
        floor = r["publish-floor"]["rows"] / r["publish-floor"]["seconds"]
        for part in PUBLISH:
            x = r[part]
            if "skipped" in x:
                continue
            rate = x["rows"] / x["seconds"]
            lines.append(
                f"| {r['scale']} | {part} | {x['rows']:,} | {rate / 1e6:.2f} | "
                f"{floor / rate:.2f}x | {x['peak_gb']:.2f} |"
            )
    head = "| users x items | similar items | items | seconds | items/s | speed-up | same lists |"
    lines += ["", head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["similar-torch"]
        for part in SIMILAR:
            x = r[part]
            if "skipped" in x:
                continue
            same = "–"
            if part != "similar-torch" and "skipped" not in base:
                same = "yes" if x["lists"] == base["lists"] else "no"
                same += ", same cosines" if x["cosines"] == base["cosines"] else ""
            speed = f"{base['seconds'] / x['seconds']:.2f}x" if "skipped" not in base else "–"
            lines.append(
                f"| {r['scale']} | {part} | {x['items']:,} | {x['seconds']:.2f} | "
                f"{x['items'] / x['seconds']:,.0f} | {speed} | {same} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scales", default="100000:50000,1000000:100000")
    ap.add_argument(
        "--sample", type=int, default=100_000, help="users timed for floor, faiss, core"
    )
    ap.add_argument("--workdir", type=Path, help="keep the snapshots and models here")
    ap.add_argument("--pair", action="store_true", help="a pair of encoders, as served")
    ap.add_argument(
        "--provider", default="cpu", choices=("cpu", "auto", "cuda"), help="core and end to end"
    )
    ap.add_argument(
        "--parts",
        default=",".join(PARTS + PUBLISH + SIMILAR),
        help="which parts to time (the floors always run, the ORT one on the CPU only)",
    )
    ap.add_argument("--part", help=argparse.SUPPRESS)  # worker: prepare | floor | ... with --scale
    ap.add_argument("--scale", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        users, items = map(int, args.scale.split(":"))
        work = args.workdir
        if args.part == "prepare":
            prepare(users, items, work, args.pair)
            res: dict = {"ok": True}
        elif args.part == "end-to-end":
            res = run_end_to_end(work, args.provider)
        elif args.part in PUBLISH:
            res = run_publish(work, args.part)
        elif args.part in SIMILAR:
            res = run_similar(work, args.part)
        else:
            res = run_floor_and_peers(work, args.sample, args.part, args.provider)
        print("RESULT " + json.dumps(res), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="nightrec-bench-score-") as tmp:
        for scale in args.scales.split(","):
            work = (args.workdir or Path(tmp)) / (scale.replace(":", "x") + "-pair" * args.pair)
            common = ["--scale", scale, "--workdir", str(work), "--sample", str(args.sample)]
            common += ["--pair"] * args.pair + ["--provider", args.provider]
            child(["--part", "prepare", *common])
            row = {"scale": scale.replace(":", " x ") + " (pair)" * args.pair}
            # the ORT floor is a CPU one: not run beside CUDA (gpu_check.sh's time is short)
            wanted = {"floor", *args.parts.split(",")}
            if args.provider == "cpu":
                wanted.add("floor-ort")
            for part in PARTS + PUBLISH + SIMILAR:
                row[part] = (
                    child(["--part", part, *common])
                    if part in wanted
                    else {"which": part, "skipped": "not asked (--parts)"}
                )
            rows.append(row)
            print(table(rows[-1:]), flush=True)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
