"""Train the encoder on next-item prediction from a snapshot, then export and promote it.

Examples are (the last ``max_history`` items before position t, the item at t) for the
last ``targets_per_user`` positions of every user's history (items in first-seen
order). Loss: full softmax cross-entropy over the catalog.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from nightrec import registry
from nightrec.config import ContractError, Settings, TrainConfig
from nightrec.embed import load_embeddings

log = logging.getLogger(__name__)


@dataclass
class Sequences:
    """Users' histories as one flat array (CSR): items of user u are seq[starts[u]:ends[u]]."""

    user_ids: list[str]
    seq: np.ndarray  # int64 item indices (1..M), first-seen order per user
    starts: np.ndarray
    ends: np.ndarray


def load_catalog(snapshot_dir: Path) -> pl.DataFrame:
    """Snapshot items with their model index (1..M, item_id order)."""
    items = pl.read_parquet(snapshot_dir / "items.parquet")
    return items.with_row_index("idx", offset=1).with_columns(pl.col("idx").cast(pl.Int64))


def load_sequences(snapshot_dir: Path, item_index: pl.DataFrame) -> Sequences:
    """Histories over catalog items only; items unknown to the catalog are dropped."""
    inter = pl.read_parquet(snapshot_dir / "interactions.parquet", columns=["user_id", "item_id"])
    inter = inter.join(
        item_index.select("item_id", "idx"), on="item_id", how="inner", maintain_order="left"
    )
    per_user = inter.group_by("user_id", maintain_order=True).len().sort("user_id")
    inter = inter.sort("user_id", maintain_order=True)
    lengths = per_user["len"].to_numpy().astype(np.int64)
    ends = np.cumsum(lengths)
    return Sequences(
        per_user["user_id"].to_list(),
        inter["idx"].to_numpy().astype(np.int64),
        ends - lengths,
        ends,
    )


def training_examples(seqs: Sequences, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(histories [n, L], targets [n]) from the end of every history."""
    from nightrec.model import histories

    lengths = seqs.ends - seqs.starts
    first = np.maximum(seqs.starts + 1, seqs.ends - cfg.targets_per_user)  # first target pos
    count = np.maximum(seqs.ends - first, 0)
    owner = np.repeat(np.arange(len(lengths)), count)
    pos = np.repeat(first, count) + (
        np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    )
    hist = histories(seqs.seq, seqs.starts[owner], pos, cfg.max_history)
    target = seqs.seq[pos]
    if len(target) > cfg.max_examples:
        keep = np.sort(
            np.random.default_rng(cfg.seed).choice(len(target), cfg.max_examples, replace=False)
        )
        hist, target = hist[keep], target[keep]
    return hist, target


def fingerprint(snapshot_dir: Path, cfg: TrainConfig, encoder: str) -> str:
    """Same data, config and text encoder -> same version id (a re-run changes nothing)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    h.update(encoder.encode())
    for name in ("interactions.parquet", "items.parquet", "text_embeddings.npy"):
        h.update(registry.sha256(snapshot_dir / name).encode())
    return h.hexdigest()[:10]


def fit(text: np.ndarray, hist: np.ndarray, target: np.ndarray, cfg: TrainConfig):
    """Train an Encoder; returns it with the loss of each epoch."""
    import torch

    from nightrec.model import Encoder

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    text_emb = torch.from_numpy(np.vstack([np.zeros((1, text.shape[1]), np.float32), text]))
    model = Encoder(text_emb, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    h_all, t_all = torch.from_numpy(hist), torch.from_numpy(target)
    n_items = text_emb.shape[0]  # M + 1
    sampled = 0 < cfg.negatives and n_items - 1 > 2 * cfg.negatives
    gen = torch.Generator().manual_seed(cfg.seed)
    log.info("train: %s softmax over %d items", "sampled" if sampled else "full", n_items - 1)
    losses = []
    for epoch in range(cfg.epochs):
        started, total = time.perf_counter(), 0.0
        order = torch.from_numpy(rng.permutation(len(target)))
        model.train()
        for lo in range(0, len(order), cfg.batch_size):
            b = order[lo : lo + cfg.batch_size]
            if sampled:
                negatives = torch.randint(1, n_items, (cfg.negatives,), generator=gen)
                logits, labels = model.sampled_logits(h_all[b], t_all[b], negatives)
            else:
                logits, labels = model(h_all[b]), t_all[b]
            loss = torch.nn.functional.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        losses.append(total / max(len(target), 1))
        log.info(
            "train: epoch %d/%d loss %.4f (%.1fs, %d examples)",
            epoch + 1,
            cfg.epochs,
            losses[-1],
            time.perf_counter() - started,
            len(target),
        )
    return model.eval(), losses


def train(
    settings: Settings, snapshot_dir: Path, as_of: dt.date, cfg: TrainConfig = TrainConfig()
) -> str:
    """Train, export to ONNX and check parity; returns the model version (not promoted).

    Promotion is a separate step (``registry.promote``) so that a backfill's model never
    replaces a newer live one.
    """
    started = time.perf_counter()
    encoder = json.loads((snapshot_dir / "embed.json").read_text())["encoder"]
    version = f"v{as_of:%Y%m%d}-{fingerprint(snapshot_dir, cfg, encoder)}"
    existing = settings.models_dir / version
    if existing.is_dir() and (existing / registry.MANIFEST).is_file():
        registry.verify(existing)
        log.info("train: %s already trained on this snapshot and config; reused", version)
        return version
    catalog = load_catalog(snapshot_dir)
    text = load_embeddings(snapshot_dir)
    seqs = load_sequences(snapshot_dir, catalog)
    hist, target = training_examples(seqs, cfg)
    if len(target) == 0:
        raise ContractError(
            f"no user in {snapshot_dir} has two or more items: nothing to learn from"
        )
    log.info(
        "train: %d users, %d items, %d examples", len(seqs.user_ids), catalog.height, len(target)
    )
    model, losses = fit(text, hist, target, cfg)
    train_seconds = time.perf_counter() - started
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
            "metrics": {
                "train_loss": losses[-1],
                "examples": len(target),
                "users": len(seqs.user_ids),
                "items": catalog.height,
                "train_seconds": round(train_seconds, 2),
            },
        },
        example_history=np.tile(hist[:8], (2, 1))[:8],  # >= 2 rows: batch stays dynamic
    )
    log.info("train: %s trained and exported in %.1fs", version, time.perf_counter() - started)
    return version
