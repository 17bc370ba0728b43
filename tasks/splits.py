"""Evaluation splits of a snapshot: leave-one-out and a global time cut.

Each protocol has two parts, ``validation`` (for choosing a model) and ``test`` (the
held-out figure). A part is a training set and one target item per evaluated user:

- ``loo``: a user's items in history order (``first_ts``, then ``item_id``: the order
  the snapshot, training and scoring use). The last item is the test target, the one
  before it the validation target. Training for the validation part is everything
  before each user's validation target; for the test part, everything before each
  user's test target (the validation item included: the model that serves also learns
  from the latest day).
- ``time``: one global cut in time. Test is the latest ``time_test_days`` (or the
  latest ``time_test_share`` of interactions), validation the same span just before.
  Training is every interaction first seen before the part's cut; a user's target is
  the first item first seen at or after the cut (and, for validation, before the test
  cut). Interactions tied on the cut's timestamp all fall after it, so a tie never
  straddles training and target.

Only ``first_ts`` and ``first_strength`` (what the user did at ``first_ts``) are read:
``last_ts``, ``n_events`` and ``purchased`` of an early pair can describe events after
the cut, and would leak them.

Users with a target but no training item are the cold users (production gives them
popular items). Targets that are inactive items are left out (nothing can rank them)
and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nightrec.config import ContractError, EvalConfig
from nightrec.train import STRENGTH, Sequences, to_sequences

log = logging.getLogger(__name__)

PROTOCOLS = ("loo", "time")
PARTS = ("validation", "test")
US_PER_DAY = 86_400 * 1_000_000


@dataclass
class Split:
    """One part of one protocol."""

    protocol: str
    part: str
    train: Sequences  # histories of every user with >= 1 training item (model indices 1..M)
    train_t: np.ndarray  # [len(train.seq)] int64 first_ts (µs since epoch) of each training item
    users: list[str]  # evaluated users, user_id order
    row: np.ndarray  # [n] each evaluated user's row in ``train``; -1: no training item (cold)
    target: np.ndarray  # [n] int64 model index of each user's target item
    cut: int | None = None  # time protocol: first µs after training
    inactive_targets: int = 0  # targets left out because their item is inactive
    sampled_from: int = 0  # users with a target before sampling down to ``max_users``

    def history_lengths(self) -> np.ndarray:
        """[n] training items of each evaluated user (0 for cold users)."""
        lengths = self.train.ends - self.train.starts
        return np.where(self.row >= 0, lengths[np.maximum(self.row, 0)], 0)


def load_interactions(snapshot_dir: Path, catalog: pl.DataFrame) -> pl.DataFrame:
    """(user_id, item_id, idx, t[, first_strength]) of catalog items, in history order per
    user.

    ``catalog`` is ``train.load_catalog``'s frame; ``t`` is ``first_ts`` in µs; the
    strength only where the snapshot has it.
    """
    path = snapshot_dir / "interactions.parquet"
    inter = pl.read_parquet(path)
    missing = {"user_id", "item_id", "first_ts"} - set(inter.columns)
    if missing:
        raise ContractError(f"{path} lacks column(s) {sorted(missing)}")
    strength = [STRENGTH] if STRENGTH in inter.columns else []
    inter = inter.select("user_id", "item_id", "first_ts", *strength)
    for name in inter.columns:
        nulls = inter[name].null_count()
        if nulls:
            first = int(inter.with_row_index("n").filter(pl.col(name).is_null())["n"][0])
            raise ContractError(f"{path} row {first + 1}: {name} is null ({nulls} rows)")
    inter = inter.join(catalog.select("item_id", "idx"), on="item_id", how="inner")
    return inter.select(
        "user_id", "item_id", "idx", pl.col("first_ts").dt.epoch("us").alias("t"), *strength
    ).sort(["user_id", "t", "item_id"])


def time_cuts(t: np.ndarray, cfg: EvalConfig) -> tuple[int, int]:
    """(validation cut, test cut) in µs for the time protocol."""
    if len(t) == 0:
        return 0, 0
    if cfg.time_test_days:
        test = int(t.max()) + 1 - cfg.time_test_days * US_PER_DAY
        return test - cfg.time_test_days * US_PER_DAY, test
    ordered = np.sort(t)
    n = len(ordered)

    def at(share: float) -> int:  # first µs of the latest ``share`` of interactions
        return int(ordered[min(max(int(np.floor(n * (1.0 - share))), 0), n - 1)])

    return at(2 * cfg.time_test_share), at(cfg.time_test_share)


def make_split(
    inter: pl.DataFrame,
    active: np.ndarray,
    protocol: str,
    part: str,
    cfg: EvalConfig | None = None,
) -> Split:
    """One part of one protocol from ``load_interactions``'s frame.

    Args:
        inter: (user_id, item_id, idx, t) in history order.
        active: [M + 1] bool, whether each model index is an active item.
        protocol: ``loo`` or ``time``.
        part: ``validation`` or ``test``.
        cfg: time cut, sampling of evaluated users (None: ``EvalConfig()``).
    """
    cfg = cfg or EvalConfig()
    if protocol not in PROTOCOLS or part not in PARTS:
        raise ContractError(f"unknown split {protocol}/{part}: use {PROTOCOLS} x {PARTS}")
    cut: int | None = None
    if protocol == "loo":
        ranked = inter.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).over("user_id").alias("pos"),
            pl.len().over("user_id").cast(pl.Int64).alias("n"),
        )
        held = pl.col("n") - (1 if part == "test" else 2)  # position of the target
        train = ranked.filter(pl.col("pos") < held)
        targets = ranked.filter(pl.col("pos") == held)
    else:
        val_cut, test_cut = time_cuts(inter["t"].to_numpy(), cfg)
        cut = test_cut if part == "test" else val_cut
        train = inter.filter(pl.col("t") < cut)
        after = pl.col("t") >= cut
        if part == "validation":
            after = after & (pl.col("t") < test_cut)
        targets = inter.filter(after).group_by("user_id", maintain_order=True).first()

    strength = [STRENGTH] if STRENGTH in inter.columns else []
    train = train.select("user_id", "idx", "t", *strength)
    targets = targets.select("user_id", "idx")
    is_active = pl.Series(active[targets["idx"].to_numpy()])
    inactive = int((~is_active).sum())
    targets = targets.filter(is_active)
    sampled_from = targets.height
    if targets.height > cfg.max_users:
        keep = np.random.default_rng(cfg.seed).choice(targets.height, cfg.max_users, replace=False)
        targets = targets[np.sort(keep)]

    seqs = to_sequences(train)
    rows = pl.DataFrame(
        {"user_id": seqs.user_ids, "row": np.arange(len(seqs.user_ids), dtype=np.int64)}
    )
    targets = targets.join(rows, on="user_id", how="left").sort("user_id")
    split = Split(
        protocol=protocol,
        part=part,
        train=seqs,
        train_t=train["t"].to_numpy().astype(np.int64),
        users=targets["user_id"].to_list(),
        row=targets["row"].fill_null(-1).to_numpy().astype(np.int64),
        target=targets["idx"].to_numpy().astype(np.int64),
        cut=cut,
        inactive_targets=inactive,
        sampled_from=sampled_from,
    )
    log.debug(
        "split %s/%s: %d training items of %d users; %d targets (%d cold users)",
        protocol,
        part,
        len(seqs.seq),
        len(seqs.user_ids),
        len(split.users),
        int((split.row < 0).sum()),
    )
    return split


def given_targets(
    inter: pl.DataFrame, targets: pl.DataFrame, catalog: pl.DataFrame, active: np.ndarray
) -> Split:
    """Training on every interaction of the snapshot, against targets held out of it.

    For benchmarks whose last items were never ingested (``targets``: user_id, item_id).
    Protocol ``heldout``, part ``test``; targets outside the catalog are dropped.
    """
    found = targets.select("user_id", "item_id").join(
        catalog.select("item_id", "idx"), on="item_id", how="inner"
    )
    is_active = pl.Series(active[found["idx"].to_numpy()])
    seqs = to_sequences(inter)
    rows = pl.DataFrame(
        {"user_id": seqs.user_ids, "row": np.arange(len(seqs.user_ids), dtype=np.int64)}
    )
    found = found.filter(is_active).join(rows, on="user_id", how="left").sort("user_id")
    return Split(
        protocol="heldout",
        part="test",
        train=seqs,
        train_t=inter["t"].to_numpy().astype(np.int64),
        users=found["user_id"].to_list(),
        row=found["row"].fill_null(-1).to_numpy().astype(np.int64),
        target=found["idx"].to_numpy().astype(np.int64),
        inactive_targets=int((~is_active).sum()),
        sampled_from=found.height,
    )
