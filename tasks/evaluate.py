"""Evaluate a training config against baselines on held-out splits; the promotion gate.

For every protocol (``splits``) and part (validation, test), the candidate encoder is
trained with the given ``TrainConfig`` on the part's training data only (the exported
model, trained on everything, is never evaluated: it has seen the targets) and ranks
every item for each evaluated user with PyTorch, masked as production scores: padding,
inactive items and the user's own items never ranked, popularity for users without
training items. Parts whose training data are the same (a digest of their histories)
share one fit: training is deterministic, so a second fit would give the same model
(Beauty's time cut falls on each user's last item: its four fits were two). The baselines
(``baselines``) rank the same users on the same split.

Every figure becomes a row of ``eval_metrics`` (``eval_store``), and the run's
``reports/<run_id>/evaluation.json`` holds the summary and the split counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nightrec import baselines, eval_store, metrics, rules, splits, workers
from nightrec.config import ContractError, EvalConfig, Settings, TrainConfig, safe_id
from nightrec.embed import load_embeddings
from nightrec.ranking import RankConfig
from nightrec.rules import RulesConfig
from nightrec.train import Sequences, fit, load_catalog, training_examples

log = logging.getLogger(__name__)

CANDIDATE = eval_store.CANDIDATE
SLICES = ("all", "cold_item", "cold_user", "short_history")


class Candidate:
    """An encoder scoring a split's users with PyTorch: the user's last ``max_history``
    training items in, a score for every item index out."""

    name = CANDIDATE

    def __init__(self, model, seqs: Sequences, max_history: int) -> None:
        import torch

        with torch.inference_mode():
            self.items = model.item_vectors()  # [M + 1, dim]
        self.model, self.seqs, self.max_history = model, seqs, max_history
        self.examples = 0

    @classmethod
    def fit(cls, split: splits.Split, text: np.ndarray, cfg: TrainConfig) -> Candidate:
        """Train with ``cfg`` on the split's training part only (``train.fit``).

        Without ``refit``: the figure is that of the model that chose its epoch, trained on
        all but the few percent of examples held out for that choice. The served model's
        refit learns from those too, so the gate judges a slightly weaker model than the
        one that serves (conservative), at half the cost of four fits a night.
        """
        hist, target, strength = training_examples(split.train, cfg)
        if len(target) == 0:
            log.warning("evaluate: no user has 2+ training items: the candidate is untrained")
        model, _ = fit(text, hist, target, dataclasses.replace(cfg, refit=False), strength)
        out = cls(model, split.train, cfg.max_history)
        out.examples = len(target)
        return out

    def scores(self, rows: np.ndarray) -> np.ndarray:
        import torch

        from nightrec.model import histories

        s = self.seqs
        hist = histories(s.seq, s.starts[rows], s.ends[rows], self.max_history)  # [B, L]
        codes = torch.from_numpy(s.strengths(s.starts[rows], s.ends[rows], self.max_history))
        with torch.inference_mode():
            return self.model.scores(torch.from_numpy(hist), self.items, codes).numpy()


class Reranked:
    """The candidate's lists through the ranking layer, as ``nightrec score`` serves them.

    ``scores`` returns -inf for every item but the re-ranked list, which gets descending
    values: ``baselines.rank`` then keeps exactly that list, in that order.
    """

    name = CANDIDATE

    def __init__(self, candidate, split: splits.Split, bias: np.ndarray, layer, k: int) -> None:
        self.candidate, self.split, self.bias, self.layer, self.k = candidate, split, bias, layer, k

    def scores(self, rows: np.ndarray) -> np.ndarray:
        from nightrec import ranking

        s = baselines.mask_seen(self.candidate.scores(rows) + self.bias, self.split.train, rows)
        top = baselines.top_k(s, self.layer.cfg.candidates * self.k)  # [B, C], -1 padded
        score = np.where(top >= 0, np.take_along_axis(s, np.maximum(top, 0), 1), -np.inf)
        order, _, _, ok = ranking.rerank(self.layer, np.maximum(top, 0), score, self.k)
        out = np.full_like(s, -np.inf)
        chosen = np.take_along_axis(top, order, 1)
        r, c = np.nonzero(ok)
        out[r, chosen[r, c]] = (self.k - c).astype(s.dtype)
        return out


class Ruled:
    """The candidate's scores with what the business rules remove set to -inf, as served:
    globally removed items for every user, a user's exclusion list, everything outside a
    user's inclusion list (``rules.removals``). A held-out target a rule removes cannot be
    hit: the figures show what the rules cost."""

    name = CANDIDATE

    def __init__(self, candidate, split: splits.Split, removals, catalog: pl.DataFrame) -> None:
        index = catalog.select("item_id", "idx")

        def per_user(pairs: pl.DataFrame) -> dict[str, np.ndarray]:
            grouped = pairs.join(index, on="item_id", how="inner").group_by("user_id")
            return {u: np.asarray(i, dtype=np.int64) for u, i in grouped.agg("idx").iter_rows()}

        self.candidate = candidate
        self.users = split.train.user_ids  # train row -> user id
        self.removed = removals.removed.join(index, on="item_id")["idx"].to_numpy()
        self.excluded = per_user(removals.excluded)
        listed = removals.include["user_id"].unique().to_list()
        self.allowed = {u: np.zeros(0, dtype=np.int64) for u in listed} | per_user(removals.include)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        s = self.candidate.scores(rows)
        s[:, self.removed] = -np.inf
        for i, row in enumerate(rows.tolist()):
            user = self.users[row]
            if user in self.excluded:
                s[i, self.excluded[user]] = -np.inf
            if user in self.allowed:
                keep = s[i, self.allowed[user]]
                s[i] = -np.inf
                s[i, self.allowed[user]] = keep
        return s


def slice_masks(split: splits.Split, item_users: np.ndarray, short: int) -> dict[str, np.ndarray]:
    """[n] bool per slice: all; targets without training interactions; users without
    training items; users with 1..``short`` training items."""
    lengths = split.history_lengths()
    return {
        "all": np.ones(len(split.users), dtype=bool),
        "cold_item": item_users[split.target] == 0,
        "cold_user": lengths == 0,
        "short_history": (lengths >= 1) & (lengths <= short),
    }


def evaluate_split(
    split: splits.Split,
    text: np.ndarray,
    active: np.ndarray,
    cfg: TrainConfig,
    eval_cfg: EvalConfig,
    candidate: baselines.Ranker | None = None,
    rank_cfg: RankConfig | None = None,
    catalog: pl.DataFrame | None = None,
    removals=None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rank with the candidate and the baselines; (figure rows without run columns, counts).

    ``candidate`` None: an encoder trained with ``cfg`` on the split's training part.
    ``rank_cfg`` active (and ``catalog`` given): the candidate's lists go through the
    ranking layer first, as they are served. ``removals`` (``rules.removals``, with
    ``catalog``): the business rules that remove items apply before that layer, as in
    scoring.
    """
    n_index = len(active)
    bias = np.where(active, 0.0, -np.inf).astype(np.float32)  # [M + 1]; padding is inactive
    pop = baselines.popularity(split, n_index, eval_cfg.popular_window_days)
    item_users = np.bincount(split.train.seq, minlength=n_index)  # [M + 1]
    vectors = metrics.normalise(np.vstack([np.zeros((1, text.shape[1]), np.float32), text]))
    masks = slice_masks(split, item_users, eval_cfg.short_history)
    k = max(eval_cfg.ks)
    counts: dict[str, Any] = {
        "users": len(split.users),
        "users_with_target": split.sampled_from,
        "train_users": len(split.train.user_ids),
        "train_items": len(split.train.seq),
        "inactive_targets": split.inactive_targets,
        **{f"users_{name}": int(m.sum()) for name, m in masks.items() if name != "all"},
        "seconds": {},
    }
    rows: list[dict[str, Any]] = []
    rankers: list[baselines.Ranker] = []
    if len(split.users):
        if candidate is None:
            t = time.perf_counter()
            fitted = Candidate.fit(split, text, cfg)
            counts["train_examples"] = fitted.examples
            counts["seconds"]["fit"] = round(time.perf_counter() - t, 3)
            candidate = fitted
        if removals is not None and catalog is not None:
            candidate = Ruled(candidate, split, removals, catalog)
        if rank_cfg is not None and rank_cfg.active and catalog is not None:
            from nightrec.ranking import layer_for_split

            layer = layer_for_split(split, text, catalog, rank_cfg)
            candidate = Reranked(candidate, split, bias, layer, k)
        rankers = [
            candidate,
            baselines.Popular(pop),
            baselines.ItemKNN(split, pop, eval_cfg.knn_neighbors),
            baselines.Transition(split, pop),
        ]
    for ranker in rankers:
        t = time.perf_counter()
        lists = baselines.rank(ranker, split, bias, pop, k, eval_cfg.batch_users)
        figures = metrics.compute(
            lists,
            split.target,
            eval_cfg.ks,
            vectors,
            item_users,
            len(split.train.user_ids),
            int(active.sum()),
            masks,
        )
        for name, mask in masks.items():
            rows.append(_row(ranker.name, "users", 0, name, float(mask.sum())))
            rows += [
                _row(ranker.name, m, kk, name, v) for (m, kk), v in figures.get(name, {}).items()
            ]
        counts["seconds"][ranker.name] = round(time.perf_counter() - t, 2)
    return rows, counts


def _row(model: str, metric: str, k: int, slice_: str, value: float) -> dict[str, Any]:
    return {"model": model, "metric": metric, "k": k, "slice": slice_, "value": value}


def evaluate(
    settings: Settings,
    snapshot_dir: Path,
    run_id: str,
    model_version: str | None,
    cfg: TrainConfig | None = None,
    eval_cfg: EvalConfig | None = None,
    rank_cfg: RankConfig | None = None,
    rule_cfg: RulesConfig | None = None,
) -> eval_store.Summary:
    """Evaluate ``cfg`` and the baselines on every configured protocol; record the figures.

    ``rank_cfg``: the ranking layer the run serves with (None or off: the encoder's lists).
    ``rule_cfg``: the business rules it serves with; those that remove items (exclusion
    and inclusion lists) apply to the candidate's lists (``Ruled``), not the baselines'.

    Writes the run's ``eval_metrics`` rows (replacing earlier ones of ``run_id``) and
    ``reports/<run_id>/evaluation.json``. Returns the summary (slice ``all``):
    ``{protocol: {split: {model: {"ndcg@10": .., "hr@10": .., "users": ..}}}}``.
    ``model_version`` labels the rows: the version trained with ``cfg`` on this snapshot.
    ``eval_cfg`` None: ``EvalConfig()``; ``cfg`` None: ``TrainConfig()``, made now.
    """
    started = time.perf_counter()
    eval_cfg = eval_cfg or EvalConfig()
    cfg = cfg or TrainConfig()
    safe_id(run_id, "run_id")
    rule_cfg = rule_cfg if rule_cfg is not None and rule_cfg.removes_items else None
    rules_doc = _rules_doc(snapshot_dir, rule_cfg)
    if model_version is not None:
        safe_id(model_version, "model_version")
        reused = _reuse(settings, run_id, model_version, cfg, eval_cfg, rank_cfg, rules_doc)
        if reused is not None:
            return reused
    evaluated_at = dt.datetime.now(dt.UTC)
    as_of = _as_of(snapshot_dir)
    parts = [(protocol, part) for protocol in eval_cfg.protocols for part in splits.PARTS]
    inputs = _Inputs.load(snapshot_dir, rule_cfg)
    # parts whose training data are the same train the same model (training is
    # deterministic): one fit for each group (Beauty's loo and time splits coincide)
    groups: dict[str, list[int]] = {}
    for i, (protocol, part) in enumerate(parts):
        split = splits.make_split(inputs.inter, inputs.active, protocol, part, eval_cfg)
        groups.setdefault(_training_key(split), []).append(i)
    fits = list(groups.values())
    # the fits are the cost: side by side on the host's cores unless the data is small
    # (a worker's start, ~3 s of imports, would cost more than it saves)
    procs = workers.available(len(fits)) if _events(snapshot_dir) >= PARALLEL_EVENTS else 1
    if procs > 1:
        del inputs  # each worker loads its own
        # the test parts first: they train on more (each user's validation item too), and
        # starting the longest fits first ends the last one sooner (Beauty, two workers:
        # 224 + 158 s and 232 + 161 s instead of 158 + 161 and 224 + 232)
        fits.sort(key=lambda g: all(parts[i][1] != "test" for i in g))
        jobs = [
            (
                _parts_in_worker,
                (snapshot_dir, rule_cfg, [parts[i] for i in g], cfg, eval_cfg, rank_cfg),
            )
            for g in fits
        ]
        done = {
            i: r
            for g, out in zip(fits, workers.run(jobs, procs), strict=True)
            for i, r in zip(g, out, strict=True)
        }
    else:
        done = {
            i: r
            for g in fits
            for i, r in zip(
                g, _parts(inputs, [parts[i] for i in g], cfg, eval_cfg, rank_cfg), strict=True
            )
        }
    results = [done[i] for i in range(len(parts))]
    frames, details = [], {}
    for (protocol, part), (rows, counts) in zip(parts, results, strict=True):
        details[f"{protocol}/{part}"] = counts
        if rows:
            frames.append(
                pl.DataFrame(rows).with_columns(
                    pl.lit(protocol).alias("protocol"), pl.lit(part).alias("split")
                )
            )
    for protocol in eval_cfg.protocols:
        _log_protocol(protocol, frames, details)
    base = pl.DataFrame(
        schema={"model": pl.Utf8, "metric": pl.Utf8, "k": pl.Int64, "slice": pl.Utf8}
        | {"value": pl.Float64, "protocol": pl.Utf8, "split": pl.Utf8}
    )
    table = (
        pl.concat([base, *frames], how="vertical_relaxed")
        .with_columns(
            pl.lit(run_id).alias("run_id"),
            pl.lit(as_of).alias("as_of"),
            pl.lit(model_version, dtype=pl.Utf8).alias("model_version"),
            pl.lit(evaluated_at).alias("evaluated_at"),
        )
        .filter(pl.col("value").is_not_nan())
    )  # undefined figures (diversity@1) are left out
    written = eval_store.write_rows(settings, run_id, table.select(eval_store.COLUMNS))
    summary = eval_store.summarize(table)
    out = eval_store.reports_dir(settings, run_id)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "run_id": run_id,
        "as_of": as_of.isoformat(),
        "model_version": model_version,
        "snapshot": str(snapshot_dir),
        "evaluated_at": evaluated_at.isoformat(),
        "train_config": dataclasses.asdict(cfg),
        "eval_config": dataclasses.asdict(eval_cfg),
        "rank_config": _rank_doc(rank_cfg),
        "rules": rules_doc,
        "splits": details,
        "processes": procs,
        "summary": summary,
        "seconds": round(time.perf_counter() - started, 2),
    }
    tmp = out / "evaluation.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=_jsonable))
    tmp.replace(out / "evaluation.json")
    log.info(
        "evaluate: run %s, %d figures written in %.1fs -> %s",
        run_id,
        written,
        time.perf_counter() - started,
        out / "evaluation.json",
    )
    return summary


PARALLEL_EVENTS = 20_000  # snapshot interactions from which evaluate's parts run as processes


@dataclasses.dataclass
class _Inputs:
    """What every part of an evaluation reads from the snapshot."""

    catalog: pl.DataFrame
    text: np.ndarray  # [M, T] rows in catalog order
    active: np.ndarray  # [M + 1] bool, padding inactive
    inter: pl.DataFrame  # ``splits.load_interactions``
    removals: Any  # ``rules.removals`` or None

    @classmethod
    def load(cls, snapshot_dir: Path, rule_cfg: RulesConfig | None) -> _Inputs:
        catalog = load_catalog(snapshot_dir)
        text = load_embeddings(snapshot_dir)
        if text.shape[0] != catalog.height:
            raise ContractError(
                f"{snapshot_dir}: {text.shape[0]} text embeddings for {catalog.height} items: "
                "run `nightrec embed` for this snapshot again"
            )
        active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
        inter = splits.load_interactions(snapshot_dir, catalog)
        removals = None
        if rule_cfg is not None:
            users = inter["user_id"].unique().sort()
            removals = rules.removals(snapshot_dir, users, rule_cfg)
        return cls(catalog, text, active, inter, removals)


def _training_key(split: splits.Split) -> str:
    """A digest of a split's training histories: the same digest, the same fitted model."""
    import hashlib

    t = split.train
    h = hashlib.sha256()
    for a in (t.seq, t.starts, t.ends, t.codes if t.codes is not None else np.zeros(0)):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update("\n".join(t.user_ids).encode())
    return h.hexdigest()


def _parts(
    inputs: _Inputs,
    parts: list[tuple[str, str]],
    cfg: TrainConfig,
    eval_cfg: EvalConfig,
    rank_cfg: RankConfig | None,
) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """``evaluate_split`` of parts (protocol, part) that share their training data: the
    candidate is fitted once, on the first, and ranks every part's users."""
    out = []
    model, first, examples, fit_seconds = None, None, 0, 0.0
    for protocol, part in parts:
        split = splits.make_split(inputs.inter, inputs.active, protocol, part, eval_cfg)
        candidate, own = None, False
        if len(split.users):
            if model is None:
                t = time.perf_counter()
                fitted = Candidate.fit(split, inputs.text, cfg)
                fit_seconds = round(time.perf_counter() - t, 3)
                model, first, examples = fitted.model, f"{protocol}/{part}", fitted.examples
                candidate, own = fitted, True
            else:
                candidate = Candidate(model, split.train, cfg.max_history)
        rows, counts = evaluate_split(
            split,
            inputs.text,
            inputs.active,
            cfg,
            eval_cfg,
            candidate,
            rank_cfg,
            inputs.catalog,
            inputs.removals,
        )
        if candidate is not None:
            counts["train_examples"] = examples
            counts["seconds"]["fit"] = fit_seconds if own else 0.0
            if not own:  # the same training data: the same model
                counts["fit_shared_with"] = first
                log.info(
                    "evaluate: %s/%s ranks with the model fitted for %s", protocol, part, first
                )
        out.append((rows, counts))
    return out


_LOADED: dict[tuple[str, str], _Inputs] = {}  # a worker's inputs, loaded once for the parts it runs


def _parts_in_worker(
    snapshot_dir: Path,
    rule_cfg: RulesConfig | None,
    parts: list[tuple[str, str]],
    cfg: TrainConfig,
    eval_cfg: EvalConfig,
    rank_cfg: RankConfig | None,
) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """``_parts`` in a worker process (``workers.run``), which loads the snapshot itself."""
    key = (str(snapshot_dir), repr(rule_cfg))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _Inputs.load(snapshot_dir, rule_cfg)
    return _parts(_LOADED[key], parts, cfg, eval_cfg, rank_cfg)


def _events(snapshot_dir: Path) -> int:
    """Interactions in the snapshot (its Parquet footer; 0 if it has none)."""
    path = snapshot_dir / "interactions.parquet"
    if not path.is_file():
        return 0
    return int(pl.scan_parquet(path).select(pl.len()).collect().item())


def _rank_doc(rank_cfg: RankConfig | None) -> dict | None:
    return dataclasses.asdict(rank_cfg) if rank_cfg is not None and rank_cfg.active else None


def _rules_doc(snapshot_dir: Path, rule_cfg: RulesConfig | None) -> dict | None:
    """The rules that remove items the figures were measured under, with the lists'
    checksum; None: none."""
    if rule_cfg is None:
        return None
    from nightrec.registry import sha256

    path = snapshot_dir / rules.FILE
    return {
        "applied": [r for r in rule_cfg.applied() if r != "consumables"],
        "lists_sha256": sha256(path) if path.is_file() else None,
    }


def _reuse(
    settings: Settings,
    run_id: str,
    model_version: str,
    cfg: TrainConfig,
    eval_cfg: EvalConfig,
    rank_cfg: RankConfig | None = None,
    rules_doc: dict | None = None,
) -> eval_store.Summary | None:
    """The figures of an earlier run that evaluated the same version the same way, or None.

    A model version id is a fingerprint of the snapshot, the training configuration and the
    text encoder, and evaluation is deterministic: a re-run (a retry, a second demo run, a
    cleared task) copies those figures to ``run_id`` instead of fitting four models again.
    """
    earlier = eval_store.latest_run_of(settings, model_version)
    if earlier is None or earlier == run_id:
        return None
    doc_path = eval_store.reports_dir(settings, earlier) / "evaluation.json"
    if not doc_path.is_file():
        return None
    doc = json.loads(doc_path.read_text())

    def canonical(config: object) -> object:
        return json.loads(json.dumps(dataclasses.asdict(config), default=_jsonable))  # type: ignore[call-overload]

    same = (
        doc.get("train_config") == canonical(cfg)
        and doc.get("eval_config") == canonical(eval_cfg)
        and doc.get("rank_config") == _rank_doc(rank_cfg)
        and doc.get("rules") == rules_doc
    )
    if not same:
        return None
    rows = eval_store.run_rows(settings, earlier).with_columns(pl.lit(run_id).alias("run_id"))
    eval_store.write_rows(settings, run_id, rows.select(eval_store.COLUMNS))
    out = eval_store.reports_dir(settings, run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(
        json.dumps({**doc, "run_id": run_id, "reused_from": earlier}, indent=2)
    )
    log.info(
        "evaluate: %s was evaluated by run %s with the same configuration; %d figures reused",
        model_version,
        earlier,
        rows.height,
    )
    return eval_store.summarize(rows)


def _as_of(snapshot_dir: Path) -> dt.date:
    meta = snapshot_dir / "snapshot.json"
    if meta.is_file():
        return dt.date.fromisoformat(json.loads(meta.read_text())["as_of"])
    try:
        return dt.date.fromisoformat(snapshot_dir.name)
    except ValueError as exc:
        raise ContractError(
            f"{snapshot_dir} has no snapshot.json and is not named by date"
        ) from exc


def _jsonable(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def _log_protocol(protocol: str, frames: list[pl.DataFrame], details: dict) -> None:
    """One INFO line: test HR@10 / NDCG@10 of every model, and the split's counts."""
    mine = [f for f in frames if f["protocol"][0] == protocol]
    test = details.get(f"{protocol}/test", {})
    if not mine:
        log.info("evaluate %s: no evaluated users (%s)", protocol, test)
        return
    rows = pl.concat(mine).filter(
        (pl.col("slice") == "all") & (pl.col("k") == 10) & (pl.col("split") == "test")
    )
    parts = []
    for model in (CANDIDATE, "popular", "item_knn", "transition"):
        got = {r["metric"]: r["value"] for r in rows.filter(model=model).iter_rows(named=True)}
        if got:
            parts.append(f"{model} {got.get('hr', math.nan):.4f}/{got.get('ndcg', math.nan):.4f}")
    log.info(
        "evaluate %s test HR@10/NDCG@10: %s; %d users (%d cold users, %d cold items), "
        "%d training items; fit %.1fs",
        protocol,
        ", ".join(parts) or "none at K=10",
        test.get("users", 0),
        test.get("users_cold_user", 0),
        test.get("users_cold_item", 0),
        test.get("train_items", 0),
        test.get("seconds", {}).get("fit", 0.0),
    )


def gate(
    summary: eval_store.Summary,
    live: eval_store.Summary | None,
    metric: str = "ndcg@10",
    split: str = "validation",
    tolerance: float = 0.02,
) -> tuple[bool, str]:
    """Whether the candidate may be promoted, and why (one line).

    It must beat every baseline on ``metric`` (``split`` part, slice all) in every
    protocol of ``summary``, and be no worse than ``live``'s recorded figure by more
    than ``tolerance`` (relative) in every protocol both have. ``live`` None: nothing to
    compare against (first model, or the live one was never evaluated).
    """
    reasons, passed = [], []
    for protocol, parts in sorted(summary.items()):
        models = parts.get(split, {})
        mine = models.get(CANDIDATE, {}).get(metric)
        if mine is None or math.isnan(mine):
            reasons.append(f"{protocol}: no {split} {metric} for the candidate")
            continue
        for name, figures in sorted(models.items()):
            theirs = figures.get(metric)
            if name != CANDIDATE and theirs is not None and not mine > theirs:
                reasons.append(f"{protocol}: {metric} {mine:.4f} does not beat {name} {theirs:.4f}")
        old = ((live or {}).get(protocol, {}).get(split, {}).get(CANDIDATE, {})).get(metric)
        if old is not None and mine < old * (1.0 - tolerance):
            reasons.append(
                f"{protocol}: {metric} {mine:.4f} is below the live model's {old:.4f} "
                f"by more than {tolerance:.0%}"
            )
        passed.append(
            f"{protocol} {metric} {mine:.4f}" + (f" (live {old:.4f})" if old is not None else "")
        )
    if not summary:
        reasons.append("nothing was evaluated")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"beats every baseline on {split}: " + ", ".join(passed)
