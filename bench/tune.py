"""Choose TrainConfig defaults on Beauty's validation item, never its test item.

The Beauty landing of ``bench/quality.py`` never ingests each user's last item (the test
target). Here the snapshot's own leave-one-out split holds out the last *ingested* item
(Beauty's validation item) and every fit trains on the items before it, so nothing below
reads a test target. One fit per process, one torch thread, no refit: two fits run side by
side on a 2-core host.

    python bench/tune.py prepare                     # ingest, snapshot, embed (once)
    python bench/tune.py fit base                    # the defaults
    python bench/tune.py fit neg8k negatives=8192 seed=8
    python bench/tune.py score base neg8k base+neg8k # NDCG@10 / HR@10, '+': summed scores
    python bench/tune.py fit cold hide=0.05          # quality.py --cold-share's items hidden
    python bench/tune.py --hide 0.05 score cold cold:k1m1.5   # cold vs warm HR@50; ':'
        # re-borrows the cold items' id parts: k donors, softmax temperature t, scale m

A fit saves its weights to ``<home>/tune/<name>.pt``; ``score`` ranks the saved models
(and sums of them) over every active item, the user's training items excluded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

HOME = Path("/tmp/nightrec-quality/beauty")


def _setup(home: Path):
    from quality import AS_OF, BEAUTY, beauty_landing

    from nightrec import embed, ingest, snapshot
    from nightrec.config import Settings

    settings = Settings.from_env(home=home, models_dir=home / "models")
    beauty_landing(home / "landing", BEAUTY)
    ingest.ingest(settings)
    snap = snapshot.snapshot(settings, AS_OF)
    embed.embed(settings, snap)
    return snap


def _split(snap: Path, hide: float = 0.0):
    """(loo test split, text, active, hidden item mask); ``hide``: this share of items
    (seeded) loses every training interaction, its targets kept: cold items."""
    import numpy as np

    from nightrec import embed, splits, train

    catalog = train.load_catalog(snap)
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    inter = splits.load_interactions(snap, catalog)
    split = splits.make_split(inter, active, "loo", "test")
    hidden = np.zeros(len(active), dtype=bool)
    if hide > 0:
        # the items ``quality.py --cold-share`` hides: its seeded draw over items.tsv's ids
        import polars as pl
        from quality import BEAUTY

        ids = pl.read_csv(
            BEAUTY / "items.tsv", separator="\t", quote_char=None, infer_schema=False
        )["p5_item_id"].to_numpy()
        drawn = np.random.default_rng(0).choice(ids, round(hide * len(ids)), replace=False)
        hidden[catalog.filter(pl.col("item_id").is_in(drawn.tolist()))["idx"].to_numpy()] = True
        s = split.train
        keep = ~hidden[s.seq]
        owner = np.repeat(np.arange(len(s.starts)), s.ends - s.starts)
        lengths = np.bincount(owner[keep], minlength=len(s.starts))
        ends = np.cumsum(lengths)
        codes = None if s.codes is None else s.codes[keep]
        split.train = train.Sequences(s.user_ids, s.seq[keep], ends - lengths, ends, codes)
    return split, embed.load_embeddings(snap), active, hidden


def fit(home: Path, name: str, pairs: list[str]) -> None:
    import torch

    from nightrec import train

    torch.set_num_threads(1)
    hide = float(dict(p.split("=") for p in pairs).pop("hide", 0))
    pairs = [p for p in pairs if not p.startswith("hide=")]
    from quality import _overrides

    cfg = dataclasses.replace(_overrides(pairs), refit=False)
    split, text, _, _ = _split(_setup(home), hide)
    hist, target, strength = train.training_examples(split.train, cfg)
    t0 = time.perf_counter()
    model, _ = train.fit(text, hist, target, cfg, strength)
    out = home / "tune"
    out.mkdir(exist_ok=True)
    torch.save({"cfg": dataclasses.asdict(cfg), "state": model.state_dict()}, out / f"{name}.pt")
    info = model.fit_info | {"seconds": round(time.perf_counter() - t0, 1), "pairs": pairs}
    info["hide"] = hide
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


def _reborrow(model, text, known, k: int, temp: float, mult: float = 1.0) -> None:
    """Cold items' id parts again, from their ``k`` closest known items by text cosine:
    weights softmax(cos / temp) over those k, scaled by the closest cosine (x ``mult``)."""
    import numpy as np
    import torch

    cold = np.flatnonzero(~known[1:]) + 1
    have = np.flatnonzero(known[1:]) + 1
    unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    cos = unit[cold - 1] @ unit[have - 1].T  # [C, K]
    top = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    c = np.take_along_axis(cos, top, 1)
    w = np.exp((c - c[:, :1]) / temp)
    w = w / w.sum(1, keepdims=True) * np.clip(c[:, :1] * mult, 0, 1)
    with torch.no_grad():
        ids = model.item_id.weight
        ids[torch.from_numpy(cold)] = torch.einsum(
            "ck,ckd->cd", torch.from_numpy(w.astype(np.float32)), ids[torch.from_numpy(have[top])]
        )


def score(home: Path, names: list[str], hide: float) -> None:
    import numpy as np
    import torch

    from nightrec import baselines, train
    from nightrec.config import TrainConfig
    from nightrec.evaluate import Candidate
    from nightrec.model import Encoder

    torch.set_num_threads(2)
    split, text, active, hidden = _split(_setup(home), hide)
    rows = split.row
    assert (rows >= 0).all()
    cache: dict[str, np.ndarray] = {}

    def scores(name: str) -> np.ndarray:
        if name not in cache:
            base, _, variant = name.partition(":")
            saved = torch.load(home / "tune" / f"{base}.pt")
            cfg = TrainConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()}
            )
            model = Encoder.from_state(saved["state"], cfg)
            if variant:  # e.g. k5t0.05m1.5: 5 donors, softmax temperature 0.05, x 1.5
                variant, _, mult = variant.partition("m")
                k, _, temp = variant[1:].partition("t")
                hist, target, _ = train.training_examples(split.train, cfg)
                known = train._known(hist, target, len(active))
                _reborrow(model, text, known, int(k), float(temp or 1e9), float(mult or 1))
            cand = Candidate(model, split.train, cfg.max_history)
            parts = [cand.scores(rows[lo : lo + 1024]) for lo in range(0, len(rows), 1024)]
            cache[name] = np.vstack(parts)
        return cache[name]

    cold = hidden[split.target]
    print(f"{len(rows)} users, {int(cold.sum())} cold targets")
    print("| model | NDCG@10 | HR@10 | HR@50 | cold HR@50 | warm HR@50 | cold/warm |")
    print("|---|---|---|---|---|---|---|")
    for combo in names:
        s = sum(scores(n) for n in combo.split("+"))
        s = np.where(active, s, -np.inf)
        s = baselines.mask_seen(s, split.train, rows)
        mine = s[np.arange(len(rows)), split.target][:, None]
        rank = (s > mine).sum(1)
        ndcg = np.where(rank < 10, 1 / np.log2(rank + 2), 0).mean()
        hit = rank < 50
        c, w = (hit[cold].mean(), hit[~cold].mean()) if cold.any() else (np.nan, hit.mean())
        print(
            f"| {combo} | {ndcg:.4f} | {(rank < 10).mean():.4f} | {hit.mean():.4f} "
            f"| {c:.4f} | {w:.4f} | {c / w:.3f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--home", type=Path, default=HOME)
    ap.add_argument("action", choices=("prepare", "fit", "score"))
    ap.add_argument("args", nargs="*")
    ap.add_argument("--hide", type=float, default=0.0, help="score: the fits' hidden share")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("nightrec.ingest").setLevel(logging.WARNING)
    if a.action == "prepare":
        _setup(a.home)
    elif a.action == "fit":
        fit(a.home, a.args[0], a.args[1:])
    else:
        score(a.home, a.args, a.hide)


if __name__ == "__main__":
    main()
