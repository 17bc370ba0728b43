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

    python bench/ranking.py                    # reuses bench/quality.py's --home
    python bench/ranking.py --only synth
"""

from __future__ import annotations

import argparse
import logging
import sys
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("nightrec.ingest", "nightrec.landing", "nightrec.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows, sanity = [], {}
    for name in ("beauty", "synth"):
        if args.only not in (None, name):
            continue
        home = args.home / (
            name if name == "beauty" else f"synth-{args.synth_users}x{args.synth_items}"
        )
        snap, heldout, version = prepare(name, home, args)
        rows += sweep(name, snap, heldout, version, home)
        sanity[name] = similar_sanity(snap, version, home)
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
