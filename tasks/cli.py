"""``nightrec``: every pipeline step from the command line, without Airflow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nightrec.config import ContractError, ScoreConfig, Settings, TrainConfig, parse_date

STEPS = """steps (in nightly order):
  synth     generate a synthetic landing folder (items, users, events)
  ingest    load new landing files into the warehouse (bad rows -> rejected_rows)
  snapshot  cut the warehouse at a date into Parquet
  embed     embed item text with the pretrained encoder (cached by text hash)
  train     train the encoder, export to ONNX, check parity, promote
  score     score every user with ONNX Runtime (top-N, unseen, active items)
  publish   swap in a new serving DuckDB + Parquet and record the run
  run       all of the above after synth, in order
  recs      show a user's published recommendations
  rollback  point serving/current back at the previous version
"""


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(home=args.home, models_dir=args.models_dir, text_model=args.text_model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nightrec",
        description="Nightly batch recommendations.",
        epilog=STEPS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--home", help="state folder (env NIGHTREC_HOME, default ./var)")
    parser.add_argument(
        "--models-dir", help="model registry (env NIGHTREC_MODELS_DIR, default ./models)"
    )
    parser.add_argument(
        "--text-model", help="local Hugging Face model folder (env NIGHTREC_TEXT_MODEL)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = sub.add_parser("synth", help="generate synthetic data")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", choices=["csv", "parquet", "jsonl"], default="csv")
    p.add_argument("--out", type=Path, help="landing folder (default <home>/landing)")

    p = sub.add_parser("ingest", help="load landing files")
    p.add_argument("--landing", type=Path, help="landing folder (default <home>/landing)")

    for name in ("snapshot", "embed", "train", "score", "publish", "run"):
        p = sub.add_parser(name, help=f"{name} step")
        p.add_argument("--as-of", help="last day of data, YYYY-MM-DD (default today, UTC)")
        if name in ("score", "publish", "run"):
            p.add_argument("--run-id", help="run id (default manual__<as_of>)")
        if name in ("score", "run"):
            p.add_argument("--top-n", type=int, default=ScoreConfig.top_n)
            p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
            p.add_argument("--batch-size", type=int, default=ScoreConfig.batch_size)
        if name in ("train", "run"):
            p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
        if name == "run":
            p.add_argument("--no-retrain", action="store_true", help="score with the current model")

    p = sub.add_parser("recs", help="show published recommendations")
    p.add_argument("--user", action="append", help="user id (repeatable)")
    p.add_argument("--sample", type=int, help="instead: this many users of each reason")
    p.add_argument("--limit", type=int, default=10)
    sub.add_parser("rollback", help="serve the previous published version")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = _dispatch(args)
    except (ContractError, FileNotFoundError) as exc:
        print(f"nightrec {args.step}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


def _dispatch(args: argparse.Namespace):  # noqa: C901 - one branch per step
    from nightrec import pipeline

    settings = _settings(args)
    as_of = parse_date(getattr(args, "as_of", None))
    run_id = getattr(args, "run_id", None) or pipeline.default_run_id(as_of)
    if args.step == "synth":
        from nightrec.synth import SynthConfig, generate

        cfg = SynthConfig(users=args.users, items=args.items, seed=args.seed, fmt=args.format)
        return generate(cfg, args.out or settings.landing)
    if args.step == "ingest":
        from nightrec.ingest import ingest

        return ingest(settings, args.landing).totals
    if args.step == "snapshot":
        from nightrec.snapshot import snapshot

        return str(snapshot(settings, as_of))
    snap = settings.snapshot_dir(as_of)
    if args.step == "embed":
        from nightrec.embed import embed

        return embed(settings, snap)
    if args.step == "train":
        from nightrec.train import train

        return train(settings, snap, as_of, TrainConfig(epochs=args.epochs))
    score_cfg = ScoreConfig()
    if args.step in ("score", "run"):
        score_cfg = ScoreConfig(
            top_n=args.top_n, provider=args.provider, batch_size=args.batch_size
        )
    if args.step == "score":
        from nightrec.score import score

        return score(settings, snap, run_id, score_cfg)
    if args.step == "publish":
        from nightrec.publish import publish

        return publish(settings, run_id, as_of)
    if args.step == "run":
        out = pipeline.run_all(
            settings,
            as_of,
            run_id,
            retrain=not args.no_retrain,
            train_cfg=TrainConfig(epochs=args.epochs),
            score_cfg=score_cfg,
        )
        return {
            k: {"seconds": round(v["seconds"], 2), "result": v["result"]} for k, v in out.items()
        }
    if args.step == "recs":
        import polars as pl

        from nightrec.recs import recommendations_for, sample_users

        users = args.user or sample_users(settings, args.sample or 1)
        with pl.Config(tbl_rows=100, fmt_str_lengths=60, tbl_width_chars=160):
            return str(recommendations_for(settings, users, args.limit))
    if args.step == "rollback":
        from nightrec.publish import rollback

        return rollback(settings)
    raise AssertionError(args.step)


if __name__ == "__main__":
    sys.exit(main())
