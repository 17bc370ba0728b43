"""Train the encoder on next-item prediction from a snapshot, then export and promote it.

Examples are (the last ``max_history`` items before position t, the item at t) for
every position t >= 1 of every user's history (items in first-seen order; or the last
``targets_per_user`` positions). Loss: softmax cross-entropy over the catalog, or over
the batch's targets plus uniform negatives with a log-q correction when the catalog is
large.

Epoch e (from 0) trains at ``lr x lr_decay^e``. How long to train is chosen on
validation data every time: a seeded ``valid_share`` of the examples is held out, the
held-out examples are ranked over the whole catalog after every epoch, and training stops
when their NDCG@10 has not improved for ``patience`` epochs, at ``epochs``, or when the
next epoch would overrun ``max_train_seconds`` (the budget of the whole train step, from
reading the snapshot to the export: room is kept for the work after the epochs,
``TAIL_SHARE``). The model kept is the best epoch's (its
checkpoint): it never trained on the held-out examples, which are a random few percent of
positions, not the latest ones. From it, up to ``cooldown`` epochs at ``cooldown_lr`` x
the kept epoch's rate follow, each kept only if it raises the held-out NDCG@10 (the time
budget keeps room for them, and one that would overrun it is not run). The same snapshot
and config give the same weights, unless the time budget (a wall-clock guard) ended
training: the log warns and the manifest's ``stopped_by`` says so.

The refit (``refit``) then trains the same recipe from scratch on every example for the
chosen epochs and cooldown epochs, with random streams of its own. With ``ensemble`` the
served model is the pair of the two (``Encoder.pair_with``): the mean of their scores. On
a host with two or more CPUs and enough examples it runs in a process beside the epoch
choice (``_Beside``): told the best epoch so far, it keeps the states that may still be
chosen, and gives the same weights as when it runs after the choice.

Ties: histories are in (first_ts, item_id) order, so items that share a timestamp
always come in the same order; an example's history holds only items before its target
in that order, as scoring's history holds only items the user has.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nightrec import registry, workers
from nightrec.config import ContractError, Fp16Config, Int8Config, Settings, TrainConfig
from nightrec.embed import load_embeddings

log = logging.getLogger(__name__)

# bumped when the same data and config would train a different model (a new loss, fusion);
# 2: dropout, refit, cold items borrow; 3: ids only; 4: strengths; 5: the refit's own random
# streams (it may train beside the epoch choice); 7: a step projects each distinct item once,
# dropout drawn from torch.rand (same model, other random draws and sums); 8: the time budget
# covers the whole train step (the work after the epochs, a refit after the choice)
METHOD = "encoder+neighbours-8"
STRENGTH = "first_strength"  # the snapshot's column of strength codes
DEVICE_ENV = "NIGHTREC_TRAIN_DEVICE"  # auto (CUDA when torch sees one), cpu or cuda


def train_device() -> str:
    """Where the encoder trains (``NIGHTREC_TRAIN_DEVICE``): ``auto`` (the default) is CUDA
    when torch sees a GPU and the CPU otherwise; ``cuda`` without one is an error.

    The epoch choice and the refit train there; neighbour tables, cold items and the
    export run on the CPU. On CUDA a re-run is not bit for bit (its embedding backward
    sums in thread order); on the CPU it is.
    """
    import torch

    choice = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "cpu", "cuda"):
        raise ContractError(f"{DEVICE_ENV} must be auto, cpu or cuda, got {choice!r}")
    if choice != "cpu" and torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        raise ContractError(
            f"{DEVICE_ENV}=cuda, but torch {torch.__version__} sees no CUDA device "
            f"(built for CUDA {torch.version.cuda})"
        )
    return "cpu"


@dataclass
class Sequences:
    """Users' histories as one flat array (CSR): items of user u are seq[starts[u]:ends[u]]."""

    user_ids: list[str]
    seq: np.ndarray  # int64 item indices (1..M), first-seen order per user
    starts: np.ndarray
    ends: np.ndarray
    # [len(seq)] int64 strength code of each item when it entered the history (the
    # snapshot's first_strength, ``model.STRENGTH_CODES``); None: unknown (all 0)
    codes: np.ndarray | None = None

    def strengths(self, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
        """[n, length] codes beside ``model.histories(self.seq, starts, ends, length)``."""
        from nightrec.model import histories

        if self.codes is None:
            return np.zeros((len(starts), length), dtype=np.int64)
        return histories(self.codes, starts, ends, length)


def load_catalog(snapshot_dir: Path) -> pl.DataFrame:
    """Snapshot items with their model index (1..M, item_id order)."""
    items = pl.read_parquet(snapshot_dir / "items.parquet")
    return items.with_row_index("idx", offset=1).with_columns(pl.col("idx").cast(pl.Int64))


def load_sequences(snapshot_dir: Path, item_index: pl.DataFrame) -> Sequences:
    """Histories over catalog items only; items unknown to the catalog are dropped. A
    snapshot written before strengths has none (codes 0)."""
    path = snapshot_dir / "interactions.parquet"
    columns = ["user_id", "item_id"]
    if STRENGTH in pl.read_parquet_schema(path):
        columns.append(STRENGTH)
    inter = pl.read_parquet(path, columns=columns)
    inter = inter.join(
        item_index.select("item_id", "idx"), on="item_id", how="inner", maintain_order="left"
    )
    return to_sequences(inter.sort("user_id", maintain_order=True))


def to_sequences(rows: pl.DataFrame) -> Sequences:
    """CSR histories from (user_id, idx[, first_strength]) rows grouped by user, each in
    history order."""
    per_user = rows.group_by("user_id", maintain_order=True).len()
    lengths = per_user["len"].to_numpy().astype(np.int64)
    ends = np.cumsum(lengths)
    codes = None
    if STRENGTH in rows.columns:
        codes = rows[STRENGTH].fill_null(0).to_numpy().astype(np.int64)
    return Sequences(
        per_user["user_id"].to_list(),
        rows["idx"].to_numpy().astype(np.int64),
        ends - lengths,
        ends,
        codes,
    )


def training_examples(
    seqs: Sequences, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(histories [n, L], targets [n], strengths [n, L]) from every position of every history.

    ``cfg.targets_per_user`` > 0 keeps only that many positions from each history's end.
    Examples are in (user, position) order; above ``cfg.max_examples`` a seeded sample.
    A history item's strength is the one it entered the history with: never later than
    the target.
    """
    from nightrec.model import histories

    lengths = seqs.ends - seqs.starts
    first = seqs.starts + 1  # the first item has nothing before it
    if cfg.targets_per_user:
        first = np.maximum(first, seqs.ends - cfg.targets_per_user)
    count = np.maximum(seqs.ends - first, 0)
    owner = np.repeat(np.arange(len(lengths)), count)
    pos = np.repeat(first, count) + (
        np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    )
    if len(pos) > cfg.max_examples:
        keep = np.sort(
            np.random.default_rng(cfg.seed).choice(len(pos), cfg.max_examples, replace=False)
        )
        owner, pos = owner[keep], pos[keep]
    hist = histories(seqs.seq, seqs.starts[owner], pos, cfg.max_history)
    strength = seqs.strengths(seqs.starts[owner], pos, cfg.max_history)
    return hist, seqs.seq[pos], strength


def fingerprint(
    snapshot_dir: Path,
    cfg: TrainConfig,
    encoder: str,
    int8: Int8Config | None = None,
    fp16: Fp16Config | None = None,
) -> str:
    """Same data, config, text encoder and training method -> same version id (a re-run
    changes nothing; an upgrade whose training differs trains again). An int8 scorer that
    may be built is part of it (its folder differs): ``on``, or ``auto`` where the
    snapshot's catalog at the configured width (twice ``dim`` with the ensemble) is large
    enough; the scorer's own matrix is never larger, so an id without it never gets one.
    int8 off, or auto on a small catalog, leaves the id as it was before int8. So is an
    fp16 scorer, where one is built here (``Fp16Config.wanted``)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    if int8 is not None and int8.enabled != "off":
        items = pl.scan_parquet(snapshot_dir / "items.parquet").select(pl.len()).collect().item()
        if int8.wanted(items + 1, cfg.dim * (2 if cfg.ensemble else 1)):
            h.update(json.dumps(dataclasses.asdict(int8), sort_keys=True).encode())
    if fp16 is not None and fp16.wanted():
        h.update(b"fp16" + json.dumps(dataclasses.asdict(fp16), sort_keys=True).encode())
    h.update(METHOD.encode())
    h.update(encoder.encode())
    for name in ("interactions.parquet", "items.parquet", "text_embeddings.npy"):
        h.update(registry.sha256(snapshot_dir / name).encode())
    return h.hexdigest()[:10]


def holdout(n: int, cfg: TrainConfig) -> np.ndarray:
    """[n] bool: the seeded examples held out to choose the epoch (none if too few)."""
    n_valid = min(int(round(n * cfg.valid_share)), cfg.max_valid)
    valid = np.zeros(n, dtype=bool)
    if cfg.patience and n_valid >= cfg.min_valid and n - n_valid > 0:
        rng = np.random.default_rng([cfg.seed, 1])
        valid[rng.choice(n, n_valid, replace=False)] = True
    return valid


def validation_ndcg(model, hist, target, strength=None, k: int = 10, batch: int = 1024) -> float:
    """Mean NDCG@k of ``target`` ranked over every item, the history's items excluded."""
    import torch

    total = 0.0
    with torch.inference_mode():
        items = model.item_vectors()  # [M + 1, dim]
        for lo in range(0, len(target), batch):
            h, t = hist[lo : lo + batch], target[lo : lo + batch]
            c = None if strength is None else strength[lo : lo + batch]
            s = model.user_vectors(h, items, strength=c) @ items.T  # [B, M + 1]
            s[:, 0] = -torch.inf
            s.scatter_(1, h, -torch.inf)  # seen items (and padding) never ranked
            mine = s.gather(1, t[:, None])  # [B, 1]
            # rank = items scoring higher, ties counted against the target (pessimistic)
            rank = (s > mine).sum(1) + (s == mine).sum(1) - 1  # [B], 0 = first
            total += float(torch.where(rank < k, 1.0 / torch.log2(rank + 2.0), 0.0).sum())
    return total / max(len(target), 1)


def fit(
    text: np.ndarray,
    hist: np.ndarray,
    target: np.ndarray,
    cfg: TrainConfig,
    strength: np.ndarray | None = None,
    started: float | None = None,
):
    """Train an Encoder; returns it with the training loss of each epoch run.

    ``strength``: [n, L] codes beside ``hist`` (None: none known). The epoch count is
    chosen on held-out examples (module docstring); what was chosen is in the model's
    ``fit_info``. ``started``: when the train step began (``time.perf_counter()``; None:
    now): ``max_train_seconds`` counts from it.
    """
    import torch

    from nightrec import fusion
    from nightrec.model import NEIGHBOUR_BUFFERS, Encoder

    fit_started = time.perf_counter()
    started = fit_started if started is None else started
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    text_emb = torch.from_numpy(np.vstack([np.zeros((1, text.shape[1]), np.float32), text]))
    if strength is None:
        strength = np.zeros_like(hist)
    model = Encoder(text_emb, cfg)
    valid = holdout(len(target), cfg)
    strengths = model.use_strengths(strength[~valid])
    device = train_device()
    model.to(device)
    opt = _optimizer(model, cfg)

    def on(x: np.ndarray):
        return torch.from_numpy(x).to(device)

    h_all, t_all, c_all = on(hist[~valid]), on(target[~valid]), on(strength[~valid])
    h_val, t_val, c_val = on(hist[valid]), on(target[valid]), on(strength[valid])
    n_items, n = text_emb.shape[0], len(t_all)  # M + 1, training examples
    sampled = 0 < cfg.negatives and n_items - 1 > 2 * cfg.negatives
    log_q = _log_q(target[~valid], n_items, cfg).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    log.info(
        "train: %s softmax over %d items; %d examples, %d held out to choose the epoch; "
        "strengths %s; on %s",
        "sampled" if sampled else "full",
        n_items - 1,
        n,
        len(t_val),
        "read" if strengths else "not read (fewer than two kinds)",
        device,
    )

    refit = None
    if cfg.refit and valid.any() and len(target) >= PARALLEL_EXAMPLES and workers.available(2) > 1:
        # the refit needs only the epoch count: it trains in a process beside the epoch
        # choice, which tells it the best epoch so far and, at the end, the one to keep
        refit = _Beside(text_emb, hist, target, strength, cfg, model.strength_map.cpu(), device)
    # a refit not beside the choice trains after it, as many epochs again: in the budget too
    refit_after = refit is None and cfg.refit and bool(valid.any())
    try:
        losses: list[float] = []
        best, best_epoch, best_state, stale, stop = -1.0, 0, None, 0, "max epochs"
        seconds = 0.0  # the last epoch's, validation included
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            _set_lr(opt, cfg, epoch)
            loss = _epoch(model, opt, (h_all, t_all, c_all), log_q, cfg, rng, gen)
            assert loss is not None  # no abort
            losses.append(loss)
            score = validation_ndcg(model, h_val, t_val, c_val) if len(t_val) else math.nan
            seconds = time.perf_counter() - t0
            log.info(
                "train: epoch %d/%d loss %.4f, validation NDCG@10 %.4f (%.1fs)",
                epoch + 1,
                cfg.epochs,
                losses[-1],
                score,
                seconds,
            )
            if len(t_val):
                if score > best:
                    best, best_epoch, stale = score, epoch + 1, 0
                    best_state = _snapshot(model, opt)
                    if refit is not None:
                        refit.best(best_epoch)
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        stop = f"no better validation NDCG@10 for {stale} epochs"
                        break
            # room is kept for the cooldown epochs: they gain more than a late epoch
            ahead = _ahead(epoch + 1, cfg.cooldown if len(t_val) else 0, refit_after)
            if epoch + 1 < cfg.epochs and not _room(started, seconds, ahead, cfg):
                stop = f"time budget of {cfg.max_train_seconds:g}s"
                log.warning("train: stopped after %d epochs by the time budget", epoch + 1)
                break
        cooled, before_cooldown = 0, best
        if best_state is not None:
            _restore(model, opt, best_state)
            if refit is not None:
                refit.final(best_epoch)
            # the cooldown: from the kept epoch, epochs at a tenth of the rate while they
            # improve the held-out NDCG@10 (Beauty: 0.0883 -> 0.0937 after one)
            _cool(opt, cfg, best_epoch)
            for c in range(cfg.cooldown):
                # the budget covers the cooldown too: when one epoch alone used most of it
                # (1M users here: 326 s of 420), a cooldown epoch would nearly double it
                if not _room(started, seconds, _ahead(best_epoch + c, 0, refit_after), cfg):
                    stop += (
                        f"; no cooldown epoch {c + 1}: time budget of {cfg.max_train_seconds:g}s"
                    )
                    log.warning(
                        "train: cooldown epoch %d not run: it would overrun the time budget of %gs",
                        c + 1,
                        cfg.max_train_seconds,
                    )
                    break
                t0 = time.perf_counter()
                loss = _epoch(model, opt, (h_all, t_all, c_all), log_q, cfg, rng, gen)
                assert loss is not None
                score = validation_ndcg(model, h_val, t_val, c_val)
                seconds = time.perf_counter() - t0
                log.info(
                    "train: cooldown epoch %d/%d (lr x %g) loss %.4f, validation NDCG@10 %.4f "
                    "(%.1fs)",
                    c + 1,
                    cfg.cooldown,
                    cfg.cooldown_lr,
                    loss,
                    score,
                    seconds,
                )
                if not score > best:
                    break
                best, cooled, best_state = score, c + 1, _snapshot(model, opt)
                losses.append(loss)
            _restore(model, opt, best_state)
        else:
            best_epoch = len(losses)
        model.cpu()  # the tables, cold items and export: on the CPU

        def place_cold(model, h: np.ndarray, t: np.ndarray) -> np.ndarray:
            """Items absent from examples (h, t) lose their untrained id part (text alone places
            them) and, with ``cold_borrow``, take their text neighbour's; returns the known."""
            known = _known(h, t, n_items)
            model.forget_ids(torch.from_numpy(known))
            if cfg.cold_borrow:
                model.borrow_ids(fusion.donors(text, known), cfg.cold_borrow_scale)
            return known

        known = place_cold(model, hist[~valid], target[~valid])
        fused = _fuse(model, text, hist, target, strength, valid, cfg)
        refit_seconds = None
        if cfg.refit and valid.any():
            # the held-out examples chose the epoch and the neighbour weights; now the same
            # recipe learns from every example (the latest positions included) that long
            t0 = time.perf_counter()
            chosen = model
            if refit is None:
                state, refit_losses = _refit(
                    text_emb,
                    hist,
                    target,
                    strength,
                    cfg,
                    chosen.strength_map,
                    _Fixed(best_epoch, cooled),
                    device,
                )
            else:
                state, refit_losses = refit.result(cooled)
            model = Encoder(text_emb, cfg)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"text"}:
                raise RuntimeError(f"refit state: missing {missing}, unexpected {unexpected}")
            log.info(
                "train: refit on all %d examples for %d epochs, last loss %.4f",
                len(target),
                len(refit_losses),
                refit_losses[-1],
            )
            known = place_cold(model, hist, target)
            for name in NEIGHBOUR_BUFFERS:
                setattr(model, name, getattr(chosen, name))
            model.fused = chosen.fused
            if cfg.ensemble:
                model.pair_with(chosen)
                log.info("train: serving the mean of the refit's and the chosen model's scores")
            refit_seconds = round(time.perf_counter() - t0, 2)
        model.fit_info = {
            "epochs_run": len(losses),
            "best_epoch": best_epoch,
            "cooldown_epochs": cooled,
            "valid_ndcg10_before_cooldown": None
            if before_cooldown < 0
            else round(before_cooldown, 5),
            "valid_ndcg10": None if best < 0 else round(best, 5),
            "valid_examples": len(t_val),
            "stopped_by": stop,
            "items_text_only": int(n_items - 1 - known.sum()),
            "strengths": model.strength_map.unique().tolist()[1:],  # 0 (unread) sorts first
            "fusion": fused,
            "refit_seconds": refit_seconds,  # after the epoch choice (the wait, when beside it)
            "refit_beside": refit is not None,
            "device": device,
            "ensemble": model.twin is not None,
            "fit_seconds": round(time.perf_counter() - fit_started, 2),
        }
        log.info(
            "train: kept epoch %d of %d (%s), then %d cooldown epochs",
            best_epoch,
            len(losses) - cooled,
            stop,
            cooled,
        )
        return model.eval(), losses
    finally:
        if refit is not None:
            refit.close()


# The train step's work after its last epoch (the neighbour weights, the refit's last
# epoch, the int8 gate and the export), as a share of one epoch's time: the budget keeps
# room for it. 1M users x 50k items: 47 s after epochs of 193-207 s (0.23); without it
# the step overran its 420 s budget by 36 s when a cooldown epoch only just fitted.
TAIL_SHARE = 0.25


def _ahead(done: int, cooldowns: int, refit_after: bool) -> int:
    """The epochs that one more epoch commits the step to, after the ``done`` so far: it,
    ``cooldowns`` after it and, when the refit trains after the choice (not beside it), the
    refit's (as many as the choice's in all)."""
    more = 1 + cooldowns
    return more + (done + more if refit_after else 0)


def _room(started: float, epoch_seconds: float, epochs: int, cfg: TrainConfig) -> bool:
    """Whether ``epochs`` more epochs of ``epoch_seconds`` each, and the step's work after
    them (``TAIL_SHARE`` of an epoch), end within ``max_train_seconds`` of ``started``."""
    ahead = epoch_seconds * (epochs + TAIL_SHARE)
    return time.perf_counter() - started + ahead <= cfg.max_train_seconds


PARALLEL_EXAMPLES = 20_000  # examples from which the refit trains in a process of its own


def _epoch(model, opt, data, log_q, cfg: TrainConfig, rng, gen, abort=None) -> float | None:
    """One pass over ``data`` (histories [n, L], targets [n], strengths [n, L]) in an order
    drawn from ``rng`` (id dropout and negatives from ``gen``); the mean loss. ``abort``:
    checked every few steps; when it says so the pass stops and returns None."""
    import torch

    h, t, c = data
    n_items = model.text.shape[0]
    sampled = 0 < cfg.negatives and n_items - 1 > 2 * cfg.negatives
    total, n = 0.0, len(t)
    order = torch.from_numpy(rng.permutation(n)).to(t.device)
    model.train()
    for step, lo in enumerate(range(0, n, cfg.batch_size)):
        if abort is not None and step % 16 == 0 and abort():
            model.eval()
            return None
        b = order[lo : lo + cfg.batch_size]
        keep = None
        if cfg.id_dropout > 0:
            # drawn on the CPU whatever the device: the same streams everywhere
            keep = (torch.rand(n_items, generator=gen) >= cfg.id_dropout).float().to(t.device)
        if sampled:
            negatives = torch.randint(1, n_items, (cfg.negatives,), generator=gen).to(t.device)
            logits, labels = model.sampled_logits(h[b], t[b], negatives, log_q, keep, c[b])
        else:
            logits, labels = model(h[b], keep, c[b]), t[b]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(b)
    model.eval()
    return total / max(n, 1)


@dataclass
class _Fixed:
    """The refit's epoch and cooldown counts, known before it starts."""

    best: int
    cooldown: int
    final: int = 0

    def __post_init__(self) -> None:
        self.final = self.best


class _Shared:
    """The refit's epoch count as the epoch choice beside it learns it: ``best`` so far
    (earlier epochs can no longer be the one kept), ``final`` (0: not known yet), then
    ``cooldown`` epochs (-1: not known yet)."""

    def __init__(self, best, final, cooldown) -> None:
        self._best, self._final, self._cooldown = best, final, cooldown

    @property
    def cooldown(self) -> int:
        return int(self._cooldown.value)

    @property
    def best(self) -> int:
        return int(self._best.value)

    @property
    def final(self) -> int:
        return int(self._final.value)


def _refit(
    text_emb, hist, target, strength, cfg: TrainConfig, strength_map, epochs, device: str = "cpu"
):
    """A fresh encoder trained on every example for ``epochs.final`` epochs, with random
    streams of its own (the same weights whether it ran after the epoch choice or beside
    it); returns (its state without the text buffer, the epochs' losses).

    ``epochs`` (``_Fixed`` or ``_Shared``): the states of epochs from ``best`` on are kept
    until ``final`` is known. ``device``: where it trains (``train_device``); the state
    comes back on the CPU.
    """
    import torch

    from nightrec.model import Encoder

    # a pair's members start apart: their mean gains most when they differ
    torch.manual_seed(cfg.seed + 1 if cfg.ensemble else cfg.seed)
    model = Encoder(text_emb, cfg)
    model.strength_map.copy_(strength_map)  # the codes the epoch was chosen with
    model.to(device)
    opt = _optimizer(model, cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    data = tuple(torch.from_numpy(x).to(device) for x in (hist, target, strength))
    log_q = _log_q(target, text_emb.shape[0], cfg).to(device)
    kept: dict[int, tuple[dict, dict]] = {}  # epoch -> (model, optimizer) state
    losses: list[float] = []

    def needless() -> bool:  # this epoch is past the one to keep
        return bool(epochs.final) and len(losses) >= epochs.final

    while len(losses) < cfg.epochs and not needless():
        _set_lr(opt, cfg, len(losses))
        loss = _epoch(model, opt, data, log_q, cfg, rng, gen, abort=needless)
        if loss is None:
            break
        losses.append(loss)
        log.info("train: refit epoch %d loss %.4f", len(losses), loss)
        floor = epochs.best
        kept = {e: state for e, state in kept.items() if e >= floor}
        if len(losses) >= floor:
            kept[len(losses)] = _snapshot(model, opt)
    _wait(lambda: epochs.final > 0)  # ran every epoch before the choice ended
    final = epochs.final
    if final not in kept:
        raise RuntimeError(f"refit: epoch {final} was not kept (kept {sorted(kept)})")
    _restore(model, opt, kept[final])
    losses, cooled = losses[:final], [kept[final]]
    _cool(opt, cfg, final)

    def enough() -> bool:  # the choice kept fewer cooldown epochs than this
        return 0 <= epochs.cooldown < len(cooled)

    while len(cooled) <= cfg.cooldown and not enough():
        loss = _epoch(model, opt, data, log_q, cfg, rng, gen, abort=enough)
        if loss is None:
            break
        cooled.append(_snapshot(model, opt))
        losses.append(loss)
        log.info("train: refit cooldown epoch %d loss %.4f", len(cooled) - 1, loss)
    _wait(lambda: epochs.cooldown >= 0)
    model_state, _ = cooled[epochs.cooldown]
    state = {k: v.cpu() for k, v in model_state.items() if k != "text"}
    return state, losses[: final + epochs.cooldown]


def _wait(ready) -> None:
    while not ready():
        time.sleep(0.05)


def _snapshot(model, opt) -> tuple[dict, dict]:
    """Copies of the model's and the optimizer's state."""
    import copy

    return {k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(
        opt.state_dict()
    )


def _restore(model, opt, state: tuple[dict, dict]) -> None:
    model.load_state_dict(state[0])
    opt.load_state_dict(state[1])


def _set_lr(opt, cfg: TrainConfig, epoch: int) -> None:
    """The learning rate of epoch ``epoch`` (from 0): lr x lr_decay^epoch."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr * cfg.lr_decay**epoch


def _cool(opt, cfg: TrainConfig, kept: int) -> None:
    """The cooldown's learning rate, from here on: cooldown_lr x that of the kept epoch
    ``kept`` (from 1)."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr * cfg.lr_decay ** (kept - 1) * cfg.cooldown_lr


def _refit_worker(queue, threads, level, out, best, final, cooldown, args, device) -> None:
    """``_refit`` in a spawned process; puts ("ok", state as arrays, losses) or ("error",
    traceback) on ``out``."""
    import traceback

    import torch

    workers.setup(queue, threads, level)
    try:
        text, hist, target, strength, cfg, strength_map = args
        state, losses = _refit(
            torch.from_numpy(text),
            hist,
            target,
            strength,
            cfg,
            torch.from_numpy(strength_map),
            _Shared(best, final, cooldown),
            device,
        )
        out.put(("ok", {k: v.numpy() for k, v in state.items()}, losses))
    except BaseException:
        out.put(("error", traceback.format_exc(), None))


class _Beside:
    """The refit in a process of its own, started with the epoch choice; the host's torch
    threads are split between the two until it is closed."""

    def __init__(
        self, text_emb, hist, target, strength, cfg: TrainConfig, strength_map, device: str
    ) -> None:
        import multiprocessing as mp

        import torch

        ctx = mp.get_context("spawn")
        self._best, self._final = ctx.Value("i", 0), ctx.Value("i", 0)
        self._cooldown = ctx.Value("i", -1)
        self._out = ctx.Queue()
        self._queue, self._listen = workers.listener(ctx)
        threads = workers.threads_each(2)
        self._threads = torch.get_num_threads()
        args = (text_emb.numpy(), hist, target, strength, cfg, strength_map.numpy())
        self._proc = ctx.Process(
            target=_refit_worker,
            name="refit",
            args=(
                self._queue,
                threads,
                workers.level(),
                self._out,
                self._best,
                self._final,
                self._cooldown,
                args,
                device,
            ),
        )
        self._done = False
        self._proc.start()
        torch.set_num_threads(threads)
        log.info("train: the refit trains beside the epoch choice (%d torch threads each)", threads)

    def best(self, epoch: int) -> None:
        self._best.value = epoch

    def final(self, epoch: int) -> None:
        """Keep epoch ``epoch`` (the refit may start its cooldown epochs from it)."""
        self._final.value = epoch

    def result(self, cooldown: int):
        """Then ``cooldown`` epochs: (state of tensors, losses) once the refit has them."""
        import queue

        import torch

        self._cooldown.value = cooldown
        while True:
            try:
                status, payload, losses = self._out.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(
                        f"train: the refit process ended without a result "
                        f"(exit code {self._proc.exitcode})"
                    ) from None
        self._done = True
        if status != "ok":
            raise RuntimeError(f"train: the refit process failed:\n{payload}")
        return {k: torch.from_numpy(v) for k, v in payload.items()}, losses

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads)
        if self._done and self._proc.is_alive():
            self._proc.join(timeout=5.0)
        if self._proc.is_alive():  # the epoch choice failed: its refit is not wanted
            self._proc.terminate()
            self._proc.join()
        self._listen.stop()


def _optimizer(model, cfg: TrainConfig):
    """AdamW, fused: one kernel for every parameter's update instead of a dozen passes
    each (on Beauty a training step took 83 ms instead of 98, same figures)."""
    import torch

    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
    )


def _log_q(target: np.ndarray, n_items: int, cfg: TrainConfig):
    """[n_items] log of each item's chance to be a candidate of a sampled-softmax step: as
    the target of one of the batch's examples (drawn in proportion to its count) or as one
    of the uniform negatives (the log-q correction)."""
    import torch

    n = len(target)
    freq = np.bincount(target, minlength=n_items) / max(n, 1)
    rate = min(cfg.batch_size, n) * freq + cfg.negatives / max(n_items - 1, 1)
    with np.errstate(divide="ignore"):  # full softmax (no negatives): unused
        return torch.from_numpy(np.log(-np.expm1(-rate)).astype(np.float32))


def _known(hist: np.ndarray, target: np.ndarray, n_items: int) -> np.ndarray:
    """[n_items] bool: items that occur in the examples (padding excluded)."""
    known = np.zeros(n_items, dtype=bool)
    known[np.unique(hist)] = True
    known[np.unique(target)] = True
    known[0] = False
    return known


def _fuse(
    model,
    text: np.ndarray,
    hist: np.ndarray,
    target: np.ndarray,
    strength: np.ndarray,
    valid: np.ndarray,
    cfg: TrainConfig,
):
    """Choose neighbour weights on the held-out examples and set the tables (``fusion``).

    With ``cold_borrow_neighbours``, items absent from the examples a table is counted
    from enter it through their donors. Returns what was chosen, for ``fit_info``; None
    when off or nothing was held out.
    """
    import torch

    from nightrec import fusion

    if not cfg.neighbours or not valid.any():
        return None
    t0 = time.perf_counter()
    n_items = model.text.shape[0]

    def borrow(h: np.ndarray, t: np.ndarray):
        if not (cfg.cold_borrow and cfg.cold_borrow_neighbours):
            return None
        return fusion.donors(text, _known(h, t, n_items))

    unit = fusion.tables(
        hist[~valid], target[~valid], n_items, cfg.neighbours, borrow(hist[~valid], target[~valid])
    )
    pick = np.flatnonzero(valid)[: cfg.fusion_valid]
    a, b, ndcg = fusion.choose(
        model,
        torch.from_numpy(hist[pick]),
        torch.from_numpy(target[pick]),
        unit,
        torch.from_numpy(strength[pick]),
    )
    if a or b:
        every = fusion.tables(hist, target, n_items, cfg.neighbours, borrow(hist, target))
        model.set_neighbours(every, a, b)
    info = {
        "next_weight": a,
        "near_weight": b,
        "valid_ndcg10": round(ndcg[(a, b)], 5),
        "valid_ndcg10_encoder_alone": round(ndcg[(0.0, 0.0)], 5),
        "valid_examples": len(pick),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info(
        "train: neighbour weights transitions %g, co-occurrence %g: held-out NDCG@10 %.4f "
        "(encoder alone %.4f) over %d examples, chosen in %.1fs",
        a,
        b,
        info["valid_ndcg10"],
        info["valid_ndcg10_encoder_alone"],
        len(pick),
        info["seconds"],
    )
    return info


def train(
    settings: Settings,
    snapshot_dir: Path,
    as_of: dt.date,
    cfg: TrainConfig | None = None,
    int8: Int8Config = Int8Config(),
    fp16: Fp16Config = Fp16Config(),
) -> str:
    """Train, export to ONNX and check parity; returns the model version (not promoted).

    Promotion is a separate step (``registry.promote``) so that a backfill's model never
    replaces a newer live one. ``int8``: also an int8 scorer, kept if it ranks the
    held-out examples within its tolerance (``quantize``). ``fp16``: the same for the
    half-precision scorer CUDA serves (by default built where ONNX Runtime has CUDA).
    ``cfg`` None: ``TrainConfig()``, made now (its time budget defaults from the environment).
    """
    from nightrec import quantize

    started = time.perf_counter()
    cfg = cfg or TrainConfig()
    embed_info = json.loads((snapshot_dir / "embed.json").read_text())
    encoder = embed_info["encoder"]
    version = f"v{as_of:%Y%m%d}-{fingerprint(snapshot_dir, cfg, encoder, int8, fp16)}"
    existing = settings.models_dir / version
    if existing.is_dir() and (existing / registry.MANIFEST).is_file():
        registry.verify(existing)
        log.info("train: %s already trained on this snapshot and config; reused", version)
        return version
    catalog = load_catalog(snapshot_dir)
    text = load_embeddings(snapshot_dir)
    seqs = load_sequences(snapshot_dir, catalog)
    hist, target, strength = training_examples(seqs, cfg)
    if len(target) == 0:
        raise ContractError(
            f"no user in {snapshot_dir} has two or more items: nothing to learn from"
        )
    log.info(
        "train: %d users, %d items, %d examples", len(seqs.user_ids), catalog.height, len(target)
    )
    model, losses = fit(text, hist, target, cfg, strength, started=started)
    train_seconds = time.perf_counter() - started
    valid = holdout(len(target), cfg)  # the examples fit held out: the int8 gate's
    registry.export(
        model,
        settings.models_dir,
        version,
        catalog.select("item_id", "idx"),
        config=dataclasses.asdict(cfg),
        extra={
            "as_of": as_of.isoformat(),
            "data_cutoff": json.loads((snapshot_dir / "snapshot.json").read_text())["cutoff"],
            "text_encoder": encoder,
            "text_int8": quantize.text_record(embed_info),
            "metrics": {
                "train_loss": losses[-1],
                **model.fit_info,
                "examples": len(target),
                "users": len(seqs.user_ids),
                "items": catalog.height,
                "train_seconds": round(train_seconds, 2),
            },
        },
        example_history=np.tile(hist[:8], (2, 1))[:8],  # >= 2 rows: batch stays dynamic
        example_strength=np.tile(strength[:8], (2, 1))[:8],
        int8=int8,
        fp16=fp16,
        held_out=(hist[valid], target[valid], strength[valid]),
    )
    log.info("train: %s trained and exported in %.1fs", version, time.perf_counter() - started)
    return version
