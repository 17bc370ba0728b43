"""The synthetic data generator: deterministic per seed, and carrying the planted signal."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from nightrec.synth import SynthConfig, generate, make_items


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    cfg = SynthConfig(users=700, items=90, seed=11, chunk_users=300)
    generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b")
    generate(SynthConfig(users=700, items=90, seed=12, chunk_users=300), tmp_path / "c")
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert len(a) == 1 + 3 + 3  # items, users and events in 3 chunks
    assert a["events/events-00000.csv"] != c["events/events-00000.csv"]


def test_events_follow_the_planted_follow_up_more_than_chance(tmp_path):
    cfg = SynthConfig(users=2000, items=120, seed=4, fmt="parquet")
    generate(cfg, tmp_path)
    _, latent = make_items(cfg, np.random.default_rng(cfg.seed))
    views = (
        pl.read_parquet(tmp_path / "events" / "events-00000.parquet")
        .filter(pl.col("event_type") == "view")
        .with_columns(pl.col("item_id").str.slice(1).cast(pl.Int64).alias("i"))
        .with_columns(pl.col("i").shift(1).over("user_id").alias("prev"))
        .drop_nulls("prev")
    )
    follows = latent["follow"][views["prev"].to_numpy()] == views["i"].to_numpy()
    assert follows.mean() > 0.25  # follow_prob 0.35 (chance alone is about 1/120)
    users = pl.read_parquet(tmp_path / "users" / "users-00000.parquet")
    assert users.height == 2000
