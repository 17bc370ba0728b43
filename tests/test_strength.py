"""Event types and ratings as a signal: each history item reads what the user did with it
when it entered the history (the snapshot's ``first_strength``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch
from conftest import AS_OF, write_csv

from nightrec import registry, snapshot, splits, train
from nightrec.config import TrainConfig
from nightrec.ingest import ingest

EVENTS_HEADER = "user_id,item_id,event_type,ts,value"


def test_first_strength_is_the_strongest_event_at_the_items_first_timestamp(settings) -> None:
    write_csv(settings.landing / "items" / "items-1.csv", "item_id,title", ["a,A", "b,B", "c,C"])
    write_csv(
        settings.landing / "events" / "events-1.csv",
        EVENTS_HEADER,
        [
            # u1/a: viewed, bought a day later: the later purchase never counts (no leak)
            "u1,a,view,2026-10-01T10:00:00Z,",
            "u1,a,purchase,2026-10-02T10:00:00Z,",
            # u1/b: view and purchase tied on the first timestamp: the purchase
            "u1,b,view,2026-10-03T10:00:00Z,",
            "u1,b,purchase,2026-10-03T10:00:00Z,",
            # u1/c: a rating of 2.4 (rounds to 2), then a 5 later
            "u1,c,rating,2026-10-04T10:00:00Z,2.4",
            "u1,c,rating,2026-10-05T10:00:00Z,5",
            # u2: a rating of 7 (clamped to 5), one without a value, a click
            "u2,a,rating,2026-10-01T10:00:00Z,7",
            "u2,b,rating,2026-10-02T10:00:00Z,",
            "u2,c,click,2026-10-03T10:00:00Z,",
            # after the cut-off: not in the snapshot at all
            "u3,a,purchase,2026-11-05T10:00:00Z,",
        ],
    )
    ingest(settings)
    snap = snapshot.snapshot(settings, AS_OF)
    got = pl.read_parquet(snap / "interactions.parquet").select(
        "user_id", "item_id", "first_strength"
    )
    assert got.rows() == [
        ("u1", "a", 1),
        ("u1", "b", 4),
        ("u1", "c", 6),
        ("u2", "a", 9),
        ("u2", "b", 10),
        ("u2", "c", 2),
    ]
    # training and every evaluation split read the same codes beside the items
    catalog = train.load_catalog(snap)
    seqs = train.load_sequences(snap, catalog)
    assert seqs.codes is not None and seqs.codes.tolist() == [1, 4, 6, 9, 10, 2]
    split = splits.make_split(
        splits.load_interactions(snap, catalog), np.ones(4, bool), "loo", "test"
    )
    assert split.train.codes is not None and split.train.codes.tolist() == [1, 4, 9, 10]


# planted: after item 1 the next item is 2 when item 1 was rated 5 (code 9) and 3 when it
# was rated 1 (code 5); the items before item 1 are noise, viewed (1) or clicked (2)
CFG = TrainConfig(
    dim=16, max_history=4, epochs=30, patience=0, batch_size=64, lr=1e-2, dropout=0.1, seed=3
)
N_ITEMS = 12


def _planted(rng: np.random.Generator, users: int = 400) -> train.Sequences:
    seq, codes, starts, ends = [], [], [], []
    for u in range(users):
        noise = rng.choice(np.arange(4, N_ITEMS + 1), size=2, replace=False).tolist()
        liked = u % 2 == 0
        starts.append(len(seq))
        seq += [*noise, 1, 2 if liked else 3]
        codes += [*rng.integers(1, 3, size=2).tolist(), 9 if liked else 5, 1]
        ends.append(len(seq))
    return train.Sequences(
        [f"u{u:04d}" for u in range(users)],
        np.array(seq, dtype=np.int64),
        np.array(starts, dtype=np.int64),
        np.array(ends, dtype=np.int64),
        np.array(codes, dtype=np.int64),
    )


@pytest.fixture(scope="module")
def planted() -> dict:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    hist, target, strength = train.training_examples(_planted(rng), CFG)
    return {"text": text, "hist": hist, "target": target, "strength": strength}


def _top(model, last_code: int) -> int:
    hist = torch.tensor([[0, 5, 6, 1]])
    codes = torch.tensor([[0, 1, 1, last_code]])
    with torch.no_grad():
        s = model.scores(hist, model.item_vectors(), codes)[0]
    s[0] = -torch.inf
    s[hist[0]] = -torch.inf
    return int(s.argmax())


def test_the_encoder_learns_what_a_rating_says_about_the_next_item(planted) -> None:
    p = planted
    model, _ = train.fit(p["text"], p["hist"], p["target"], CFG, p["strength"])
    assert model.fit_info["strengths"] == [1, 2, 5, 9]
    assert _top(model, 9) == 2 and _top(model, 5) == 3
    # without strengths the two histories are the same history: one answer for both
    off, _ = train.fit(
        p["text"], p["hist"], p["target"], dataclasses.replace(CFG, strengths=False), p["strength"]
    )
    assert off.fit_info["strengths"] == []
    assert _top(off, 9) == _top(off, 5)


def test_the_exported_scorer_reads_strengths(planted, tmp_path) -> None:
    p = planted
    model, _ = train.fit(p["text"], p["hist"], p["target"], CFG, p["strength"])
    index = pl.DataFrame({"item_id": [f"i{i}" for i in range(1, N_ITEMS + 1)]}).with_row_index(
        "idx", offset=1
    )
    folder = registry.export(
        model,
        tmp_path,
        "v-strength",
        index.with_columns(pl.col("idx").cast(pl.Int64)),
        dataclasses.asdict(CFG),
        {},
        example_history=p["hist"][:8],
        example_strength=p["strength"][:8],
    )
    sess = ort.InferenceSession(str(folder / registry.SCORER), providers=["CPUExecutionProvider"])
    bias = np.zeros(N_ITEMS + 1, dtype=np.float32)
    bias[0] = -np.inf
    hist = np.array([[0, 5, 6, 1]] * 2, dtype=np.int64)
    codes = np.array([[0, 1, 1, 9], [0, 1, 1, 5]], dtype=np.int64)
    _, top, _ = sess.run(None, registry.scorer_inputs(hist, hist, bias, 1, codes))
    assert top[:, 0].tolist() == [2, 3]


def test_one_kind_of_event_trains_the_model_trained_without_strengths(planted) -> None:
    """Data whose events all carry one strength (Amazon Beauty: purchases) reads none:
    bit for bit the weights of a model given no strengths at all."""
    p = planted
    cfg = dataclasses.replace(CFG, epochs=3)
    same = np.where(p["hist"] > 0, 4, 0)
    one, _ = train.fit(p["text"], p["hist"], p["target"], cfg, same)
    none, _ = train.fit(p["text"], p["hist"], p["target"], cfg)
    assert one.fit_info["strengths"] == []
    for name, value in none.state_dict().items():
        assert torch.equal(value, one.state_dict()[name]), name
