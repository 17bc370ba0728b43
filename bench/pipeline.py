"""Benchmark the whole pipeline on synthetic data at several sizes.

Each size runs in its own process (so peak memory is that size's): synth -> ingest ->
snapshot -> embed -> train -> score -> publish, timed per step. Scoring is also
compared with a baseline in the same run: the same TopNScorer in eager PyTorch on
the same user batches (a sample), i.e. what ONNX Runtime buys over not exporting.

    python bench/pipeline.py                       # 10k, 100k, 1M users
    python bench/pipeline.py --scales 10000:2000   # users:items pairs
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_SCALES = "10000:2000,100000:10000,1000000:50000"
STEPS = ("synth", "ingest", "snapshot", "embed", "train", "score", "publish")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def baseline_eager(settings, snap, batch_size: int, top_n: int, max_users: int) -> dict:
    """Eager PyTorch TopNScorer on the same batches the ONNX scorer gets (first max_users)."""
    import numpy as np
    import onnxruntime as ort
    import polars as pl
    import torch

    from nightrec import registry
    from nightrec.config import TrainConfig
    from nightrec.model import Encoder, TopNScorer, histories, padded_sets
    from nightrec.train import load_sequences

    version, manifest = registry.load_current(settings.models_dir)
    items = pl.read_parquet(version / "items.parquet")
    state = torch.load(version / "encoder.pt")
    cfg = TrainConfig(**manifest["config"])
    scorer = TopNScorer(Encoder.from_state(state, cfg)).eval()
    seqs = load_sequences(snap, items)
    n = min(max_users, len(seqs.user_ids))
    bias = np.zeros(items.height + 1, dtype=np.float32)
    bias[0] = -np.inf
    sess = ort.InferenceSession(str(version / registry.SCORER), providers=["CPUExecutionProvider"])
    batches = []
    for lo in range(0, n, batch_size):
        u = np.arange(lo, min(n, lo + batch_size))
        s, e = seqs.starts[u], seqs.ends[u]
        batches.append((histories(seqs.seq, s, e, cfg.max_history), padded_sets(seqs.seq, s, e)))
    out = {}
    with torch.inference_mode():
        t = time.perf_counter()
        for h, x in batches:
            scorer(
                torch.from_numpy(h), torch.from_numpy(x), torch.from_numpy(bias), torch.zeros(top_n)
            )
        out["eager_users_per_s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for h, x in batches:
        sess.run(None, registry.scorer_inputs(h, x, bias, top_n))
    out["onnx_users_per_s"] = n / (time.perf_counter() - t)
    out["sample_users"] = n
    return out


def text_gemm_floor(base, texts: list[str], bf16: bool = False) -> float:
    """texts/s of the encoder's matrix products alone (all cores): the same batches
    ``encode`` makes (longest first, ``EmbedConfig.batch_size``, padded to each batch's
    longest), every layer's Q/K/V, attention, output and feed-forward products, and nothing
    else (no embedding, softmax, norm, GELU or tokenizing): what any runtime of this encoder
    must at least do. float32 in NumPy; ``bf16``: bfloat16 in PyTorch (NumPy has no bf16),
    the floor of the bf16 encoder."""
    import numpy as np
    import torch

    cfg = base.model.config
    h, inner, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    rng = np.random.default_rng(0)

    def array(shape, scale=1.0):
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        return torch.from_numpy(x).to(torch.bfloat16) if bf16 else x

    # scaled by 1/sqrt(fan-in), and every layer reads the same x: chained, the attention
    # product (cubic in x) overflows to inf and NaN by the fourth layer; the products are the same
    w_h, w_up, w_down = (
        array(shape, 1 / np.sqrt(shape[0])) for shape in ((h, h), (h, inner), (inner, h))
    )
    order = sorted(texts, key=len, reverse=True)
    size = base.cfg.batch_size
    shapes = [
        (
            len(order[lo : lo + size]),
            base._tokens(order[lo : lo + size], "np")["input_ids"].shape[1],
        )
        for lo in range(0, len(order), size)
    ]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b, t in shapes:
            x = array((b * t, h))
            for _ in range(cfg.num_hidden_layers):
                q, k, v = x @ w_h, x @ w_h, x @ w_h
                split = (b, t, heads, h // heads)
                q, k, v = (m.reshape(split).swapaxes(1, 2) for m in (q, k, v))
                ctx = (q @ k.swapaxes(2, 3)) @ v  # [b, heads, t, h / heads]
                y = ctx.swapaxes(1, 2).reshape(b * t, h) @ w_h
                y = (y @ w_up) @ w_down  # y, not x: every layer reads x, so nothing overflows
    return len(order) / (time.perf_counter() - t0)


def embed_runtimes(settings, texts: list[str], floor: bool = True) -> dict:
    """texts/s of the PyTorch encoder, the ONNX one and the int8 ONNX one on the same item
    texts, and the lowest cosine of each one's vectors to PyTorch's (the drift gate's
    measure: ``EmbedConfig.min_cosine``); beside them (``floor``) the CPU's fp32 GEMM
    floor of those texts (``text_gemm_floor``). Each runtime on its device: CUDA where
    torch / ONNX Runtime have it (``<name>_device``)."""
    from nightrec import embed
    from nightrec.config import EmbedConfig

    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)
    base = embed.TextEncoder(model_dir, EmbedConfig())
    encoders = {"torch": base, "torch-bf16": embed.Bf16TextEncoder(base)}
    for name, int8 in (("onnx", False), ("onnx-int8", True)):
        path = embed.export_onnx(settings, model_dir, key, int8, base)
        encoders[name] = embed.OnnxTextEncoder(base, path)
    out: dict = {}
    ref = None
    for name, enc in encoders.items():
        enc.encode(texts[: EmbedConfig().batch_size])  # warm-up: the device, its kernels
        out[f"{name}_device"] = getattr(enc, "provider", None) or base.device
        t = time.perf_counter()
        vectors = enc.encode(texts)
        out[name] = len(texts) / (time.perf_counter() - t)
        ref = vectors if ref is None else ref
        out[f"{name}_min_cosine"] = float((vectors * ref).sum(1).min())
    if floor:
        out["gemm_floor"] = max(text_gemm_floor(base, texts) for _ in range(2))  # best of two
        out["gemm_floor_bf16"] = max(text_gemm_floor(base, texts, bf16=True) for _ in range(2))
    return out


def run_one(users: int, items: int, workdir: Path) -> dict:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import polars as pl

    from nightrec import embed, ingest, publish, registry, score, snapshot, train
    from nightrec.config import ScoreConfig, Settings
    from nightrec.synth import SynthConfig, generate

    settings = Settings.from_env(home=workdir / "home", models_dir=workdir / "models")
    as_of = SynthConfig().end
    res: dict = {"users": users, "items": items, "seconds": {}, "peak_gb": {}}

    def step(name, fn, *args):
        t = time.perf_counter()
        value = fn(*args)
        res["seconds"][name] = time.perf_counter() - t
        res["peak_gb"][name] = peak_rss_gb()
        return value

    synth = step("synth", generate, SynthConfig(users=users, items=items, seed=1), settings.landing)
    res["events"] = synth["events"]
    tot = step("ingest", lambda: ingest.ingest(settings).totals)
    res["ingest_rows"] = tot["rows"]
    snap = step("snapshot", snapshot.snapshot, settings, as_of)
    emb = step("embed", embed.embed, settings, snap)  # cold text cache: every text encoded
    res["embed_texts"] = emb["encoded"]
    t = time.perf_counter()
    embed.embed(settings, snap)  # warm: every text from the cache
    res["embed_warm_seconds"] = time.perf_counter() - t
    item_texts = pl.read_parquet(snap / "items.parquet", columns=["item_text"])["item_text"]
    res["embed_runtimes"] = embed_runtimes(settings, item_texts.head(1024).to_list())
    version = step("train", train.train, settings, snap, as_of)
    registry.promote(settings.models_dir, version)  # train no longer promotes by itself
    sc = step("score", score.score, settings, snap, "bench", ScoreConfig())
    res["score_users"] = sc["users"]
    pub = step("publish", publish.publish, settings, "bench", as_of)
    res["publish_rows"] = pub["rows"]
    res["baseline"] = baseline_eager(
        settings, snap, ScoreConfig().batch_size, ScoreConfig().top_n, max_users=20_000
    )
    return res


def table(results: list[dict]) -> str:
    head = [
        "users",
        "items",
        "events",
        *[f"{s} s" for s in STEPS],
        "total s",
        "ingest rows/s",
        "score users/s",
        "publish rows/s",
        "peak GB",
        "onnx/eager users/s",
        "embed texts/s cold / warm s",
        "text encoder onnx/torch texts/s",
        "int8 onnx texts/s (min cosine)",
        "text GEMM floor texts/s",
        "bf16 text texts/s (min cosine)",
        "bf16 text GEMM floor texts/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r["seconds"]
        b = r["baseline"]
        cells = [
            f"{r['users']:,}",
            f"{r['items']:,}",
            f"{r['events']:,}",
            *[f"{s[k]:.1f}" for k in STEPS],
            f"{sum(s.values()):.1f}",
            f"{r['ingest_rows'] / s['ingest']:,.0f}",
            f"{r['score_users'] / s['score']:,.0f}",
            f"{r['publish_rows'] / s['publish']:,.0f}",
            f"{max(r['peak_gb'].values()):.2f}",
            f"{b['onnx_users_per_s']:,.0f} / {b['eager_users_per_s']:,.0f} "
            f"(x{b['onnx_users_per_s'] / b['eager_users_per_s']:.2f})",
            f"{r['embed_texts'] / s['embed']:,.0f} / {r['embed_warm_seconds']:.1f}",
            f"{r['embed_runtimes']['onnx']:,.0f} / {r['embed_runtimes']['torch']:,.0f} "
            f"(x{r['embed_runtimes']['onnx'] / r['embed_runtimes']['torch']:.2f})",
            f"{r['embed_runtimes'].get('onnx-int8', 0):,.0f} "
            f"(x{r['embed_runtimes'].get('onnx-int8', 0) / r['embed_runtimes']['torch']:.2f}, "
            f"{r['embed_runtimes'].get('onnx-int8_min_cosine', float('nan')):.4f})",
            f"{r['embed_runtimes'].get('gemm_floor', 0):,.0f}",
            f"{r['embed_runtimes'].get('torch-bf16', 0):,.0f} "
            f"(x{r['embed_runtimes'].get('torch-bf16', 0) / r['embed_runtimes']['torch']:.2f}, "
            f"{r['embed_runtimes'].get('torch-bf16_min_cosine', float('nan')):.4f})",
            f"{r['embed_runtimes'].get('gemm_floor_bf16', 0):,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scales", default=DEFAULT_SCALES, help="users:items pairs, comma-separated"
    )
    parser.add_argument("--workdir", type=Path, help="keep state here (default: a temp folder)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker mode: users:items
    args = parser.parse_args()
    if args.one:
        users, items = map(int, args.one.split(":"))
        print("RESULT " + json.dumps(run_one(users, items, args.workdir)), flush=True)
        return
    results = []
    for scale in args.scales.split(","):
        with tempfile.TemporaryDirectory(prefix="nightrec-bench-") as tmp:
            work = args.workdir / scale.replace(":", "-") if args.workdir else Path(tmp)
            proc = subprocess.run(
                [sys.executable, __file__, "--one", scale, "--workdir", str(work)],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT ") :]))
            print(table(results[-1:]), flush=True)
    print("\n" + table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
