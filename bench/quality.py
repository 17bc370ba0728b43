"""Recommendation quality on Amazon Beauty and on the synthetic set, beside the baselines.

Protocol (the issue's harness, and the literature's leave-one-out): each user's last
item is held out by never ingesting it; everything before it goes through the pipeline
(ingest -> snapshot -> embed -> train). The trained model (PyTorch weights of the
exported version) and the baselines, fitted on the same snapshot, rank every active
item for each user, the user's earlier items excluded; the held-out items are the
targets. Users with no ingested item get popular items, as scoring gives them.

Then ``nightrec evaluate`` runs on the same snapshot (its own leave-one-out and time
splits, one step earlier: the held-out items are never seen) and its figures are
printed too. Nothing is tuned on the held-out items.

    python bench/quality.py --home /tmp/nightrec-quality     # reuse: embeddings cached
    python bench/quality.py --only synth --synth-users 5000 --synth-items 1000
    python bench/quality.py --only ties      # synthetic, day-level timestamp ties, ratings
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BEAUTY = REPO.parent / "shared" / "data" / "amazon-beauty"
AS_OF = dt.date(2026, 11, 1)
MODELS = ("nightrec", "popular", "item_knn", "transition")
FIGURES = ("hr@10", "ndcg@10", "hr@100")
# Beauty, full ranking, leave-one-out (data README): HR@10 (= Recall@10), NDCG@10
PUBLISHED = (
    ("BSARec (AAAI 2024), authors' code", 0.1008, 0.0611),
    ("SASRec + sampled softmax (eSASRec re-benchmark)", 0.0921, 0.0531),
    ("eSASRec (RecSys 2025)", 0.0928, 0.0523),
    ("ICLRec (WWW 2022)", 0.0744, 0.0403),
    ("nightrec main, independent harness (issue 7)", 0.0995, 0.0590),
)


def beauty_landing(landing: Path, data: Path, cold_share: float = 0.0) -> Path:
    """Landing CSVs from the Beauty files; returns the held-out targets (Parquet).

    ``cold_share``: every ingested event of this share of the items (seeded) is dropped,
    their text kept: their held-out targets can be found only through the text.
    """
    import numpy as np
    import polars as pl

    heldout = landing.parent / "heldout.parquet"
    if heldout.is_file():
        return heldout
    items = pl.read_csv(
        data / "items.tsv", separator="\t", quote_char=None, infer_schema=False
    ).select(pl.col("p5_item_id").alias("item_id"), pl.col("title").fill_null(""))
    users, seq_items, days_back = [], [], []
    for line in (data / "sequences.txt").read_text().splitlines():
        user, *seq = line.split()
        # one event a day, the last one held out: ingested items end on AS_OF
        for pos, item in enumerate(seq):
            users.append(user)
            seq_items.append(item)
            days_back.append(len(seq) - 2 - pos)  # -1: the held-out item
    events = pl.DataFrame({"user_id": users, "item_id": seq_items, "back": days_back})
    end = dt.datetime.combine(AS_OF, dt.time(12), dt.UTC)
    ids = items["item_id"].to_numpy()
    cold = np.random.default_rng(0).choice(ids, round(cold_share * len(ids)), replace=False)
    visible = (pl.col("back") >= 0) & ~pl.col("item_id").is_in(cold.tolist())
    ingested = events.filter(visible).with_columns(
        pl.lit("purchase").alias("event_type"),
        (pl.lit(end) - pl.duration(days=pl.col("back")))
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        .alias("ts"),
    )
    for sub in ("items", "events", "users"):
        (landing / sub).mkdir(parents=True, exist_ok=True)
    items.write_csv(landing / "items" / "beauty-items.csv")
    ingested.select("user_id", "item_id", "event_type", "ts").write_csv(
        landing / "events" / "beauty-events.csv"
    )
    events.select("user_id").unique().sort("user_id").write_csv(
        landing / "users" / "beauty-users.csv"
    )
    events.filter(pl.col("back") == -1).select("user_id", "item_id").write_parquet(heldout)
    return heldout


def synth_landing(landing: Path, users: int, items: int, ties: bool = False) -> Path:
    """Synthetic landing files minus each user's last item (all its events).

    ``ties``: timestamps floored to the day (a user's events of a day tie) and a rating
    event (value 1..5) after every purchase. The last item is the last in history order
    (first timestamp, then item_id), as the snapshot orders ties.
    """
    import polars as pl

    from nightrec import synth

    heldout = landing.parent / "heldout.parquet"
    if heldout.is_file():
        return heldout
    raw = landing.parent / "synth-raw"
    opts = {"tick_seconds": 86_400, "ratings": True} if ties else {}
    synth.generate(synth.SynthConfig(users=users, items=items, end=AS_OF, **opts), raw)
    events = pl.concat([pl.read_csv(p, infer_schema=False) for p in sorted(raw.glob("events/*"))])
    first = events.group_by("user_id", "item_id").agg(pl.col("ts").min().alias("first"))
    last = first.sort("user_id", "first", "item_id").group_by("user_id").last()
    kept = events.join(last.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")
    for sub in ("items", "events", "users"):
        (landing / sub).mkdir(parents=True, exist_ok=True)
        if sub != "events":
            for p in sorted((raw / sub).glob("*")):
                p.replace(landing / sub / p.name)
    kept.write_csv(landing / "events" / "synth-events.csv")
    last.select("user_id", "item_id").write_parquet(heldout)
    return heldout


def run(name: str, home: Path, heldout: Path, cfg, eval_cfg, evaluate_too: bool) -> dict:
    """The pipeline steps, the held-out figures and (optionally) ``evaluate``'s figures."""
    import numpy as np
    import polars as pl
    import torch

    from nightrec import embed, evaluate, ingest, registry, snapshot, splits, train
    from nightrec.config import Settings
    from nightrec.model import Encoder

    settings = Settings.from_env(home=home, models_dir=home / "models")
    seconds = {}

    def step(label, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        seconds[label] = time.perf_counter() - t
        return out

    step("ingest", ingest.ingest, settings)
    snap = step("snapshot", snapshot.snapshot, settings, AS_OF)
    step("embed", embed.embed, settings, snap)
    version = step("train", train.train, settings, snap, AS_OF, cfg)

    version_dir, manifest = registry.load_version(settings.models_dir, version)
    state = torch.load(version_dir / "encoder.pt")
    model = Encoder.from_state(state, cfg)
    catalog = train.load_catalog(snap)
    text = embed.load_embeddings(snap)
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    inter = splits.load_interactions(snap, catalog)
    split = splits.given_targets(inter, pl.read_parquet(heldout), catalog, active)
    candidate = evaluate.Candidate(model.eval(), split.train, cfg.max_history)
    t = time.perf_counter()
    rows, counts = evaluate.evaluate_split(split, text, active, cfg, eval_cfg, candidate)
    seconds["rank heldout"] = time.perf_counter() - t
    held = {}
    for r in rows:
        if r["k"] or r["metric"] == "users":
            key = r["metric"] if r["metric"] == "users" else f"{r['metric']}@{r['k']}"
            held.setdefault(r["slice"], {}).setdefault(r["model"], {})[key] = r["value"]
    summary = None
    if evaluate_too:
        summary = step(
            "evaluate",
            evaluate.evaluate,
            settings,
            snap,
            f"bench-{name}",
            version,
            cfg,
            eval_cfg,
        )
    return {"heldout": held, "counts": counts, "evaluate": summary, "seconds": seconds}


def table(title: str, figures: dict, published: bool = False) -> str:
    lines = [f"\n{title}", f"| model | {' | '.join(FIGURES)} |", "|---" * (len(FIGURES) + 1) + "|"]
    for model in MODELS:
        got = figures.get(model, {})
        cells = [f"{got[f]:.4f}" if f in got else "–" for f in FIGURES]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    if published:
        for label, hr, ndcg in PUBLISHED:
            lines.append(f"| {label} | {hr:.4f} | {ndcg:.4f} | – |")
    return "\n".join(lines)


def cold_table(name: str, result: dict) -> str:
    """Held-out targets on items without training interactions, beside the warm ones."""
    held = result["heldout"]
    if "hr@10" not in held.get("cold_item", {}).get("popular", {}):
        return f"\n{name}: no cold-item targets"
    figs = ("hr@10", "ndcg@10", "hr@50", "hr@100")
    lines = [
        f"\n## {name}: cold-item targets vs warm ones",
        f"| model | slice | users | {' | '.join(figs)} |",
        "|---" * (len(figs) + 3) + "|",
    ]
    for model in MODELS:
        every, cold = held["all"][model], held["cold_item"][model]
        n, c = every["users"], cold["users"]
        # per-user means: the warm slice is what the cold one leaves of "all"
        warm = {f: (every[f] * n - cold[f] * c) / max(n - c, 1) for f in figs}
        for label, got, users in (("cold", cold, c), ("warm", warm, n - c)):
            cells = " | ".join(f"{got[f]:.4f}" for f in figs)
            lines.append(f"| {model} | {label} | {users:.0f} | {cells} |")
    return "\n".join(lines)


def report(name: str, result: dict) -> str:
    held = result["heldout"]
    n = held.get("all", {}).get("popular", {}).get("users", 0)
    out = [table(f"## {name}: last item held out ({n:.0f} users)", held["all"], name == "beauty")]
    for slice_ in ("cold_item", "cold_user", "short_history"):
        if slice_ in held:
            users = held[slice_].get("popular", {}).get("users", 0)
            out.append(table(f"{name}, slice {slice_} ({users:.0f} users)", held[slice_]))
    for protocol, parts in (result["evaluate"] or {}).items():
        for part, figures in sorted(parts.items()):
            users = figures.get("popular", {}).get("users", 0)
            out.append(
                table(f"{name}, nightrec evaluate: {protocol}/{part} ({users:.0f})", figures)
            )
    secs = ", ".join(f"{k} {v:.0f}s" for k, v in result["seconds"].items())
    out.append(f"\nseconds: {secs}")
    return "\n".join(out)


def _overrides(pairs: list[str]):
    """TrainConfig with ``field=value`` pairs over its defaults; an unknown field or a bad
    value stops the bench before any work."""
    from nightrec.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    over: dict = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or key not in fields:
            raise SystemExit(f"{pair}: not FIELD=VALUE with a TrainConfig field")
        kind = type(getattr(TrainConfig(), key))
        over[key] = raw.lower() in ("1", "true", "on") if kind is bool else kind(raw)
    return TrainConfig(**over)


def main() -> None:
    from nightrec.config import EvalConfig, TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path("/tmp/nightrec-quality"))
    ap.add_argument("--data", type=Path, default=BEAUTY)
    ap.add_argument("--only", choices=("beauty", "synth", "ties", "none"))
    ap.add_argument("--synth-users", type=int, default=5000)
    ap.add_argument("--synth-items", type=int, default=1000)
    ap.add_argument("--no-evaluate", action="store_true", help="held-out figures only")
    ap.add_argument("--tables", action="store_true", help="print the last run's tables again")
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="at most")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads: on a shared 2-core host, 2 threads spin-wait when another "
        "process is busy (an epoch took 3x longer than on 1 thread)",
    )
    ap.add_argument(
        "--cold-share",
        type=float,
        default=0.05,
        help="Beauty again with this share of items' interactions hidden (0: skip)",
    )
    ap.add_argument(
        "--no-strengths",
        action="store_true",
        help="the encoder reads no event types or ratings (TrainConfig.strengths off)",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="TrainConfig fields other than the defaults, e.g. --set dim=64 lr_decay=1",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("nightrec.ingest", "nightrec.landing"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(
        _overrides(args.set), epochs=args.epochs, strengths=not args.no_strengths
    )
    eval_cfg = EvalConfig()
    results = {}
    if args.tables:
        results = json.loads((args.home / "quality.json").read_text())
        args.only, args.cold_share = "none", 0.0
    if args.only in (None, "beauty"):
        home = args.home / "beauty"
        heldout = beauty_landing(home / "landing", args.data)
        results["beauty"] = run("beauty", home, heldout, cfg, eval_cfg, not args.no_evaluate)
        if args.cold_share > 0:
            name = f"beauty-cold{args.cold_share:g}"
            home = args.home / name
            heldout = beauty_landing(home / "landing", args.data, args.cold_share)
            results[name] = run(name, home, heldout, cfg, eval_cfg, False)
    if args.only in (None, "synth"):
        home = args.home / f"synth-{args.synth_users}x{args.synth_items}"
        heldout = synth_landing(home / "landing", args.synth_users, args.synth_items)
        results["synth"] = run("synth", home, heldout, cfg, eval_cfg, not args.no_evaluate)
    if args.only in (None, "ties"):  # day-level timestamps (many ties) and ratings
        home = args.home / f"synth-ties-{args.synth_users}x{args.synth_items}"
        heldout = synth_landing(home / "landing", args.synth_users, args.synth_items, ties=True)
        results["synth-ties"] = run(
            "synth-ties", home, heldout, cfg, eval_cfg, not args.no_evaluate
        )
    if not args.tables:
        (args.home / "quality.json").write_text(json.dumps(results, indent=2, default=str))
    print("\n".join(report(name, r) for name, r in results.items() if "cold" not in name))
    print("\n".join(cold_table(name, r) for name, r in results.items()))


if __name__ == "__main__":
    main()
