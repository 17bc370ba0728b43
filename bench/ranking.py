"""The ranking layer's controls, measured: a sweep of alpha (popularity blend) and lambda
(MMR diversity) on Beauty and the synthetic set, plus a similar-items sanity check.

Protocol: ``bench/quality.py``'s held-out last item (never ingested); the pipeline's
trained model gives each user its top ``candidates x 100`` items (seen and inactive
items out), the layer re-ranks them into a list of 100 as ``nightrec score`` does, and
the lists are scored at K = 10: NDCG, HR, catalog coverage, intra-list diversity (text
vectors) and novelty. The defaults (alpha 1, lambda 0: the layer off) are marked.

Similar items: the share of an item's top 10 (item tower cosine, as published in
``similar_items``) in its own category, against 10 random active items (synthetic set:
Beauty's catalog has no categories).

int8 scorer (``quantize``, ``Int8Config``): the trained version's ``scorer.onnx`` is
quantized as ``nightrec train --int8`` does, and both ONNX Runtime sessions (CPU) score
every evaluated user with history through ``score.run_scorer`` (top 100, the user's
items excluded, inactive items masked): NDCG@10 and HR@10 on the held-out items, the
relative NDCG drop (what the gate compares with its tolerance, there on the fit's own
held-out examples), the top-10 overlap, and the median seconds of the pass (same run,
same process; ``--repeats``). A speed-only row on a random (untrained) encoder with a
larger catalog and wider vectors shows where int8 starts to pay.

    python bench/ranking.py                    # reuses bench/quality.py's --home
    python bench/ranking.py --only synth
    python bench/ranking.py --only synth --int8-only
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ALPHAS = (1.0, 0.9, 0.7, 0.5, 0.0)
LAMBDAS = (0.0, 0.1, 0.3, 0.5, 0.9)
TOP_N, K = 100, 10


def prepare(name: str, home: Path, args) -> tuple[Path, Path, str]:
    """(snapshot, held-out targets, model version): bench/quality.py's data, trained."""
    import quality

    from nightrec import embed, ingest, snapshot, train
    from nightrec.config import Settings

    if name == "beauty":
        heldout = quality.beauty_landing(home / "landing", args.data)
    else:
        heldout = quality.synth_landing(home / "landing", args.synth_users, args.synth_items)
    settings = Settings.from_env(home=home, models_dir=home / "models")
    ingest.ingest(settings)
    snap = snapshot.snapshot(settings, quality.AS_OF)
    embed.embed(settings, snap)
    version = train.train(settings, snap, quality.AS_OF)
    return snap, heldout, version


def sweep(name: str, snap: Path, heldout: Path, version: str, home: Path) -> list[dict]:
    import numpy as np
    import polars as pl
    import torch

    from nightrec import baselines, evaluate, metrics, registry, splits, train
    from nightrec.config import TrainConfig
    from nightrec.embed import load_embeddings
    from nightrec.model import Encoder
    from nightrec.ranking import Layer, RankConfig
    from nightrec.score import _cutoff_us

    version_dir, manifest = registry.load_version(home / "models", version)
    cfg = TrainConfig(**manifest["config"])
    model = Encoder.from_state(torch.load(version_dir / "encoder.pt"), cfg)
    catalog = train.load_catalog(snap)
    text = load_embeddings(snap)
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    inter = splits.load_interactions(snap, catalog)
    split = splits.given_targets(inter, pl.read_parquet(heldout), catalog, active)
    cand = evaluate.Candidate(model, split.train, cfg.max_history)
    bias = np.where(active, 0.0, -np.inf).astype(np.float32)
    item_users = np.bincount(split.train.seq, minlength=len(active))
    vectors = metrics.normalise(np.vstack([np.zeros((1, text.shape[1]), np.float32), text]))
    model_items = pl.read_parquet(version_dir / "items.parquet")
    cutoff = _cutoff_us(snap)
    n_active = int(active.sum())
    seqs = split.train

    pop = baselines.popularity(split, len(active), 30)

    def lists_for(rank: RankConfig) -> np.ndarray:
        """[n, TOP_N] item indices per evaluated user, -1 padded (cold users: popular):
        the candidate's lists through the layer, as the evaluate step ranks them."""
        ranker = cand
        if rank.active:
            layer = Layer.from_snapshot(snap, model_items, rank, cutoff)
            ranker = evaluate.Reranked(cand, split, bias, layer, TOP_N)
        return baselines.rank(ranker, split, bias, pop, TOP_N)

    results = []
    settings = [RankConfig(alpha=a) for a in ALPHAS] + [
        RankConfig(mmr_lambda=lam) for lam in LAMBDAS if lam > 0
    ]
    for rank in settings:
        lists = lists_for(rank)
        f = metrics.compute(
            lists, split.target, (K,), vectors, item_users, len(seqs.user_ids), n_active
        )["all"]
        results.append(
            {
                "data": name,
                "alpha": rank.alpha,
                "lambda": rank.mmr_lambda,
                "default": not rank.active,
                **{m: f[m, K] for m in ("ndcg", "hr", "coverage", "diversity", "novelty")},
            }
        )
        logging.info("ranking %s: %s", name, results[-1])
    return results


def similar_sanity(snap: Path, version: str, home: Path) -> dict | None:
    """Same-category share of the top 10 similar items against random active items."""
    import numpy as np
    import polars as pl
    import torch

    from nightrec import ranking, registry, train
    from nightrec.config import TrainConfig
    from nightrec.model import Encoder

    catalog = train.load_catalog(snap)
    if "category" not in catalog.columns or catalog["category"].null_count() == catalog.height:
        return None
    version_dir, manifest = registry.load_version(home / "models", version)
    model = Encoder.from_state(
        torch.load(version_dir / "encoder.pt"), TrainConfig(**manifest["config"])
    )
    with torch.inference_mode():
        vectors = model.item_vectors().numpy()
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    cats = np.concatenate([[None], catalog["category"].to_list()])
    items, sim, _ = ranking.similar_items(vectors, active, 10)
    same = float(np.mean(cats[sim] == cats[items][:, None]))
    rng = np.random.default_rng(0)
    pool = np.flatnonzero(active)
    rand = rng.choice(pool, (len(items), 10))
    random_share = float(np.mean(cats[rand] == cats[items][:, None]))
    del pl
    return {
        "items": len(items),
        "similar_same_category": same,
        "random_same_category": random_share,
    }


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _timed(runs: dict, repeats: int) -> dict:
    """Median seconds of each run (fp32_s, int8_s) and their ratio; the passes alternate
    (fp32, int8, fp32, ...) so that load from other processes falls on both alike."""
    import numpy as np

    times: dict[str, list[float]] = {kind: [] for kind in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeats):
        for kind, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[kind].append(time.perf_counter() - t0)
    out = {f"{kind}_s": float(np.median(t)) for kind, t in times.items()}
    ratios = [a / b for a, b in zip(times["fp32"], times["int8"], strict=True)]
    return {
        **out,
        "speedup": out["fp32_s"] / out["int8_s"],
        "speedup_iqr": np.percentile(ratios, [25, 75]).tolist(),
    }


def int8_row(name: str, snap: Path, heldout: Path, version: str, home: Path, repeats: int) -> dict:
    """fp32 against int8 scorer on the held-out items (module docstring)."""
    import numpy as np
    import polars as pl

    from nightrec import quantize, registry, splits, train
    from nightrec.config import Int8Config
    from nightrec.model import histories, padded_sets
    from nightrec.score import run_scorer

    version_dir, manifest = registry.load_version(home / "models", version)
    catalog = train.load_catalog(snap)
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    inter = splits.load_interactions(snap, catalog)
    split = splits.given_targets(inter, pl.read_parquet(heldout), catalog, active)
    warm = split.row >= 0
    rows, target = split.row[warm], split.target[warm]
    seqs = split.train
    starts, ends = seqs.starts[rows], seqs.ends[rows]
    hist = histories(seqs.seq, starts, ends, int(manifest["config"]["max_history"]))
    seen = padded_sets(seqs.seq, starts, ends)
    bias = np.where(active, 0.0, -np.inf).astype(np.float32)
    int8_path = home / "bench-scorer-int8.onnx"
    ops = quantize.quantize(version_dir / registry.SCORER, int8_path, Int8Config(enabled=True))
    out: dict = {"data": name, "users": len(rows), "items": int(active.sum()), **ops}
    out["dim"] = int(manifest["config"]["dim"])
    tops = {}
    runs = {
        kind: partial(run_scorer, _session(path), hist, seen, ends - starts, bias, TOP_N, 128)
        for kind, path in (("fp32", version_dir / registry.SCORER), ("int8", int8_path))
    }
    out.update(_timed(runs, repeats))
    for kind, run in runs.items():
        top_i = run()[1]
        hit = top_i[:, :K] == target[:, None]
        out[f"{kind}_ndcg"] = float(
            np.where(hit.any(1), 1 / np.log2(hit.argmax(1) + 2.0), 0.0).mean()
        )
        out[f"{kind}_hr"] = float(hit.any(1).mean())
        tops[kind] = top_i[:, :K]
    out["drop"] = (out["fp32_ndcg"] - out["int8_ndcg"]) / out["fp32_ndcg"]
    out["overlap"] = float(
        np.mean([len(set(a) & set(b)) / K for a, b in zip(tops["fp32"], tops["int8"], strict=True)])
    )
    int8_path.unlink()
    logging.info("int8 %s: %s", name, out)
    return out


def int8_speed_only(home: Path, n_items: int, dim: int, repeats: int) -> dict:
    """fp32 against int8 seconds on a random encoder (no metric: it learnt nothing)."""
    import numpy as np
    import polars as pl
    import torch

    from nightrec import quantize, registry
    from nightrec.config import Int8Config, TrainConfig
    from nightrec.model import Encoder, padded_sets
    from nightrec.score import run_scorer

    torch.manual_seed(0)
    cfg = TrainConfig(dim=dim)
    text = torch.randn(n_items + 1, 384)
    text[0] = 0.0
    model = Encoder(text, cfg).eval()
    index = pl.DataFrame(
        {"item_id": [f"i{i}" for i in range(1, n_items + 1)], "idx": np.arange(1, n_items + 1)}
    )
    rng = np.random.default_rng(0)
    hist = rng.integers(1, n_items + 1, (2048, cfg.max_history)).astype(np.int64)
    folder = registry.export(model, home / "bench-int8-models", "v-random", index, {}, {}, hist[:8])
    int8_path = folder.parent / "scorer_int8.onnx"
    ops = quantize.quantize(folder / registry.SCORER, int8_path, Int8Config(enabled=True))
    length = cfg.max_history
    seen = padded_sets(
        hist.ravel(), np.arange(len(hist)) * length, np.arange(1, len(hist) + 1) * length
    )
    bias = np.zeros(n_items + 1, dtype=np.float32)
    bias[0] = -np.inf
    out: dict = {"data": "random encoder", "users": len(hist), "items": n_items, "dim": dim, **ops}
    widths = np.full(len(hist), cfg.max_history)
    runs = {
        kind: partial(run_scorer, _session(path), hist, seen, widths, bias, TOP_N, 128)
        for kind, path in (("fp32", folder / registry.SCORER), ("int8", int8_path))
    }
    out.update(_timed(runs, repeats))
    shutil.rmtree(folder.parent)
    logging.info("int8 speed only: %s", out)
    return out


def int8_table(rows: list[dict], repeats: int) -> str:
    head = (
        "| data | items | dim | users | products int8 | NDCG@10 fp32 | NDCG@10 int8 | drop | "
        "HR@10 fp32 | HR@10 int8 | top-10 overlap | fp32 s | int8 s | speed-up |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        quality = (
            f"{r['fp32_ndcg']:.4f} | {r['int8_ndcg']:.4f} | {r['drop']:+.2%} | "
            f"{r['fp32_hr']:.4f} | {r['int8_hr']:.4f} | {r['overlap']:.3f}"
            if "drop" in r
            else "– | – | – | – | – | –"
        )
        lines.append(
            f"| {r['data']} | {r['items']:,} | {r['dim']} | {r['users']:,} | "
            f"{r['products_int8']} of {r['products']} | {quality} | {r['fp32_s']:.3f} | "
            f"{r['int8_s']:.3f} | {r['speedup']:.2f}x "
            f"[{r['speedup_iqr'][0]:.2f}–{r['speedup_iqr'][1]:.2f}] |"
        )
    lines.append(
        f"\nseconds: median of {repeats} alternating passes, CPU provider, top {TOP_N}, "
        "128 users per call; speed-up = fp32 s / int8 s (same run; [IQR] of the paired "
        "ratios). drop = relative NDCG@10 drop (negative: int8 better); the gate's default "
        "tolerance is 1%."
    )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = "| data | alpha | lambda | NDCG@10 | HR@10 | coverage@10 | diversity@10 | novelty@10 |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        mark = " (default)" if r["default"] else ""
        lines.append(
            f"| {r['data']} | {r['alpha']:g}{mark} | {r['lambda']:g} | {r['ndcg']:.4f} | "
            f"{r['hr']:.4f} | {r['coverage']:.4f} | {r['diversity']:.4f} | {r['novelty']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    import quality

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path("/tmp/nightrec-quality"))
    ap.add_argument("--data", type=Path, default=quality.BEAUTY)
    ap.add_argument("--only", choices=("beauty", "synth"))
    ap.add_argument("--synth-users", type=int, default=5000)
    ap.add_argument("--synth-items", type=int, default=1000)
    ap.add_argument("--int8-only", action="store_true", help="only the int8 scorer table")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per int8/fp32 scorer")
    ap.add_argument(
        "--int8-random",
        default="100000x64,100000x256",
        help="speed-only rows (items x dim) on a random encoder; empty: none",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("nightrec.ingest", "nightrec.landing", "nightrec.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows, sanity, int8 = [], {}, []
    for name in ("beauty", "synth"):
        if args.only not in (None, name):
            continue
        home = args.home / (
            name if name == "beauty" else f"synth-{args.synth_users}x{args.synth_items}"
        )
        snap, heldout, version = prepare(name, home, args)
        int8.append(int8_row(name, snap, heldout, version, home, args.repeats))
        if args.int8_only:
            continue
        rows += sweep(name, snap, heldout, version, home)
        sanity[name] = similar_sanity(snap, version, home)
    for spec in filter(None, args.int8_random.split(",")):
        n_items, dim = (int(x) for x in spec.split("x"))
        int8.append(int8_speed_only(args.home, n_items, dim, args.repeats))
    print(int8_table(int8, args.repeats))
    if args.int8_only:
        return
    print()
    print(table(rows))
    print("\n| data | items | similar top 10 in the same category | 10 random items |")
    print("|---|---|---|---|")
    for name, s in sanity.items():
        if s is None:
            print(f"| {name} | – | no categories in this catalog | – |")
        else:
            print(
                f"| {name} | {s['items']:,} | {s['similar_same_category']:.3f} | "
                f"{s['random_same_category']:.3f} |"
            )


if __name__ == "__main__":
    main()
