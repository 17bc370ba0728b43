"""``nightrec``: every pipeline step from the command line, without Airflow."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nightrec.config import (
    ContractError,
    Fp16Config,
    Int8Config,
    ScoreConfig,
    Settings,
    TrainConfig,
    apply_umask,
    parse_date,
    safe_id,
)
from nightrec.db import Busy
from nightrec.errors import ENVIRONMENT_EXIT, describe
from nightrec.ranking import RankConfig
from nightrec.rules import KINDS, RulesConfig

STEPS = """steps (in nightly order):
  synth     generate a synthetic landing folder (items, users, events)
  ingest    load new landing files into the warehouse (bad rows -> rejected_rows)
  snapshot  cut the warehouse at a date into Parquet
  embed     embed item text with the pretrained encoder (cached by text hash)
  train     train the encoder, export to ONNX, check parity (a new model version)
  evaluate  held-out figures of the configuration and the baselines (eval_metrics)
  promote   make a model version current (only forward in data time unless --force)
  score     score every user with ONNX Runtime (top-N, unseen, active items)
  rules     load a business-rule list (exclusions, inclusions, consumables) from CSV
  publish   build a serving version; it goes live unless older than the live one
  run       all of the above after synth, in order
  recs      show a user's published recommendations
  rollback  serve the previous (or a named) serving version
  versions  list serving versions and which one is live
  report    the HTML quality report of a run (reports/<run_id>/report.html)
  prune     remove old scores, snapshots, models and stale temporary files
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, ``nightrec <step>: error: ...`` (exit 2), like step errors."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(lo: int, hi: int):
    """An argparse type: an integer within ``lo..hi``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be within {lo}..{hi}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be within 0..86400 seconds, got {text}")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(home=args.home, models_dir=args.models_dir, text_model=args.text_model)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
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

    for name in ("snapshot", "embed", "train", "evaluate", "score", "publish", "run"):
        p = sub.add_parser(name, help=f"{name} step")
        p.add_argument("--as-of", help="last day of data, YYYY-MM-DD (default today, UTC)")
        if name in ("evaluate", "score", "publish", "run"):
            p.add_argument("--run-id", help="run id (default manual__<as_of>)")
        if name == "evaluate":
            p.add_argument("--model-version", help="label of the figures (default: none)")
        if name in ("publish", "run"):
            p.add_argument(
                "--promote",
                action="store_true",
                help="serve this run (and its model) even if its date is older than the live one",
            )
        if name == "score":
            p.add_argument("--model-version", help="model version (default: the current one)")
        if name in ("score", "run"):
            p.add_argument("--top-n", type=int, default=ScoreConfig.top_n)
            p.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto")
            p.add_argument("--batch-size", type=int, default=ScoreConfig.batch_size)
            p.add_argument(
                "--topk",
                choices=["kernel", "graph"],
                default=ScoreConfig.topk,
                help="the CPU top N: nightrec's kernel (default) or the whole ONNX graph",
            )
            p.add_argument(
                "--alpha", type=float, default=1.0, help="similarity weight of the blend"
            )
            p.add_argument("--mmr-lambda", type=float, default=0.0, help="diversity; 0: off")
            p.add_argument("--category-cap", type=int, default=0, help="per category; 0: none")
            p.add_argument(
                "--exclude-items", action="store_true", help="rule: the global exclusion list"
            )
            p.add_argument(
                "--exclude-user-items",
                action="store_true",
                help="rule: per-user exclusions (bought, hidden)",
            )
            p.add_argument(
                "--include-items",
                action="store_true",
                help="rule: only items of the inclusion lists (global, per user)",
            )
            p.add_argument(
                "--consumable-days",
                type=_count(0, 36_500),
                default=RulesConfig.consumable_days,
                help="rule: consumables again this many days after the last purchase; 0: off",
            )
        if name in ("train", "evaluate", "run"):
            p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
            p.add_argument(
                "--max-train-seconds",
                type=float,
                help="time budget of the train step, from reading the snapshot to the export "
                "(env NIGHTREC_MAX_TRAIN_SECONDS, default 420)",
            )
        if name in ("train", "run"):
            p.add_argument(
                "--int8",
                choices=("auto", "on", "off"),
                default=Int8Config.enabled,
                help="also an int8 scorer, served (CPU) only within --int8-tolerance "
                "(auto: where the item matrix has >= 1M cells and ONNX Runtime has no CUDA)",
            )
            p.add_argument(
                "--int8-tolerance",
                type=float,
                default=Int8Config.tolerance,
                help="largest relative drop of held-out NDCG@10 that int8 may cost",
            )
            p.add_argument(
                "--fp16",
                choices=("auto", "on", "off"),
                default=Fp16Config.enabled,
                help="also an fp16 scorer, served on CUDA only where it ranks like fp32 "
                "(auto: built where ONNX Runtime has CUDA)",
            )
        if name == "run":
            p.add_argument("--no-retrain", action="store_true", help="score with the current model")
            p.add_argument(
                "--wait", type=_seconds, default=0.0, help="seconds to wait for a run in progress"
            )

    p = sub.add_parser("rules", help="load or list business-rule lists")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("load", help="replace one rule list with a CSV file")
    q.add_argument("--kind", choices=KINDS, required=True, help="which list the file replaces")
    q.add_argument("file", type=Path, help="the CSV file: the whole list")
    actions.add_parser("show", help="the loaded rule lists")

    p = sub.add_parser("recs", help="show published recommendations")
    p.add_argument("--user", action="append", help="user id (repeatable)")
    p.add_argument("--sample", type=_count(1, 1000), help="instead: this many users of each reason")
    p.add_argument("--limit", type=_count(1, 1000), default=10)
    p = sub.add_parser("promote", help="make a model version current")
    p.add_argument("version", help="model version folder name")
    p.add_argument("--force", action="store_true", help="also when older than the current one")
    p = sub.add_parser("rollback", help="serve the previous (or a named) published version")
    p.add_argument("--version", help="serving version id (see `nightrec versions`)")
    sub.add_parser("versions", help="list serving versions")
    p = sub.add_parser("report", help="write the HTML quality report of a run")
    p.add_argument("--run-id", required=True, help="a run that was evaluated")
    sub.add_parser("prune", help="apply retention to scores, snapshots, models, leftovers")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        apply_umask()  # before anything is written: state is owner-only (NIGHTREC_UMASK)
        result = _dispatch(args)
    except (ContractError, FileNotFoundError, Busy) as exc:
        print(f"nightrec {args.step}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full disk, a quota, a read-only mount: one line, exit 3
        why = describe(exc)
        if why is None:
            raise
        print(f"nightrec {args.step}: error: {why}", file=sys.stderr)
        return ENVIRONMENT_EXIT
    if result is not None:
        print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


def _train(args: argparse.Namespace) -> TrainConfig:
    budget = {} if args.max_train_seconds is None else {"max_train_seconds": args.max_train_seconds}
    return TrainConfig(epochs=args.epochs, **budget)


def _int8(args: argparse.Namespace) -> Int8Config:
    return Int8Config(enabled=args.int8, tolerance=args.int8_tolerance)


def _fp16(args: argparse.Namespace) -> Fp16Config:
    return Fp16Config(enabled=args.fp16)


def _dispatch(args: argparse.Namespace):  # noqa: C901 - one branch per step
    from nightrec import pipeline

    settings = _settings(args)
    as_of = parse_date(getattr(args, "as_of", None))
    run_id = safe_id(getattr(args, "run_id", None) or pipeline.default_run_id(as_of), "run_id")
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

        return train(settings, snap, as_of, _train(args), _int8(args), _fp16(args))
    if args.step == "evaluate":
        from nightrec.evaluate import evaluate

        return evaluate(settings, snap, run_id, args.model_version, _train(args))
    if args.step == "rules":
        from nightrec import rules

        if args.action == "show":
            return rules.show(settings)
        return rules.load(settings, args.kind, args.file)
    score_cfg, rank_cfg, rule_cfg = ScoreConfig(), RankConfig(), RulesConfig()
    if args.step in ("score", "run"):
        score_cfg = ScoreConfig(
            top_n=args.top_n, provider=args.provider, batch_size=args.batch_size, topk=args.topk
        )
        rank_cfg = RankConfig(
            alpha=args.alpha, mmr_lambda=args.mmr_lambda, category_cap=args.category_cap
        )
        rule_cfg = RulesConfig(
            exclude_items=args.exclude_items,
            exclude_user_items=args.exclude_user_items,
            include_items=args.include_items,
            consumable_days=args.consumable_days,
        )
    if args.step == "score":
        from nightrec.score import score

        return score(settings, snap, run_id, score_cfg, args.model_version, rank_cfg, rule_cfg)
    if args.step == "publish":
        from nightrec.publish import publish

        return publish(settings, run_id, as_of, promote=args.promote)
    if args.step == "run":
        out = pipeline.run_all(
            settings,
            as_of,
            run_id,
            retrain=not args.no_retrain,
            train_cfg=_train(args),
            int8_cfg=_int8(args),
            fp16_cfg=_fp16(args),
            score_cfg=score_cfg,
            rank_cfg=rank_cfg,
            promote=args.promote,
            lock_wait_s=args.wait,
            rule_cfg=rule_cfg,
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

        return rollback(settings, args.version)
    if args.step == "promote":
        from nightrec.registry import promote

        moved = promote(settings.models_dir, args.version, force=args.force)
        return {"version": args.version, "current": moved}
    if args.step == "report":
        from nightrec.report import write_report

        return str(write_report(settings, args.run_id))
    if args.step == "versions":
        from nightrec.publish import live, versions

        now = (live(settings) or {}).get("serving_id")
        return [{"serving_id": v, "live": v == now} for v in versions(settings)]
    if args.step == "prune":
        from nightrec.retention import prune

        return prune(settings)
    raise AssertionError(args.step)


if __name__ == "__main__":
    sys.exit(main())
