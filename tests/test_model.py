"""The encoder: ONNX/PyTorch parity, the registry, learning a planted pattern, determinism."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch
from conftest import AS_OF, write_csv

from nightrec import embed, fusion, ingest, publish, registry, score, snapshot, train
from nightrec.config import (
    ContractError,
    ScoreConfig,
    Settings,
    TrainConfig,
    cuda_in_onnxruntime,
)
from nightrec.model import Encoder, TopNScorer


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread; two threads on a busy 2-core host spin-wait
    (a 0.5 s fit took 47 s). Tests that need parallelism ask for it themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- parity and registry

N_ITEMS, TEXT_DIM = 30, 24
PARITY_CFG = TrainConfig(dim=16, max_history=6)


def _random_histories(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """[n, length] item indices 1..N_ITEMS, left-padded with 0, at least one item each."""
    hist = np.zeros((n, length), dtype=np.int64)
    for row in range(n):
        k = int(rng.integers(1, length + 1))
        hist[row, length - k :] = rng.choice(np.arange(1, N_ITEMS + 1), size=k, replace=False)
    return hist


def _random_encoder(text: torch.Tensor, cfg: TrainConfig) -> Encoder:
    model = Encoder(text, cfg).eval()
    with torch.no_grad():  # make the MLP and the attention blocks matter: default init is small
        for p in [*model.user_mlp.parameters(), *model.blocks.parameters()]:
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module", params=["encoder", "fused", "attention", "pair"])
def exported(request, tmp_path_factory) -> tuple[Encoder, Path]:
    """A random (untrained) encoder exported as version ``v-parity``; "fused" adds
    neighbour tables counted from random examples (the scatter-add in the graph);
    "attention" is the self-attention user encoder (two heads); "pair" is a fused encoder
    paired with a second one (``Encoder.pair_with``: the mean of both members' scores)."""
    torch.manual_seed(0)
    text = torch.randn(N_ITEMS + 1, TEXT_DIM)
    text[0] = 0.0
    cfg = PARITY_CFG
    if request.param == "attention":
        cfg = dataclasses.replace(PARITY_CFG, user_encoder="attention", heads=2)
    model = _random_encoder(text, cfg)
    if request.param == "pair":
        model.pair_with(_random_encoder(text, cfg))
    models = tmp_path_factory.mktemp("models")
    index = pl.DataFrame(
        {
            "item_id": [f"i{i:02d}" for i in range(1, N_ITEMS + 1)],
            "idx": np.arange(1, N_ITEMS + 1, dtype=np.int64),
        }
    )
    example = _random_histories(np.random.default_rng(0), 8, PARITY_CFG.max_history)
    if request.param in ("fused", "pair"):
        rng = np.random.default_rng(1)
        hist = _random_histories(rng, 200, PARITY_CFG.max_history)
        target = rng.integers(1, N_ITEMS + 1, 200)
        model.set_neighbours(fusion.tables(hist, target, N_ITEMS + 1, 5), 1.5, 0.7)
        assert model.fused
    folder = registry.export(
        model,
        models,
        "v-parity",
        index,
        config=dataclasses.asdict(cfg),
        extra={"note": "test"},
        example_history=example,
    )
    return model, folder


def test_onnx_matches_pytorch_on_other_shapes(exported) -> None:
    model, folder = exported
    manifest = registry.verify(folder)
    assert set(manifest["files"]) == {"scorer.onnx", "encoder.pt", "items.parquet"}
    assert manifest["parity"]["max_abs_diff"] <= registry.PARITY_ATOL

    rng = np.random.default_rng(42)
    batch, width, k = 13, 6, 4  # export used 2, 3, 5; its own parity check 7, 4, 11
    hist = _random_histories(rng, batch, PARITY_CFG.max_history)
    exclude = np.zeros((batch, width), dtype=np.int64)
    for row in range(batch):  # the history's items, padded with 0
        items = hist[row][hist[row] > 0][-width:]
        exclude[row, : len(items)] = items
    bias = np.zeros(N_ITEMS + 1, dtype=np.float32)
    inactive = np.array([3, 7, 11, 19])
    bias[0] = bias[inactive] = -np.inf

    sess = ort.InferenceSession(str(folder / registry.SCORER), providers=["CPUExecutionProvider"])
    got_s, got_i, got_b = sess.run(None, registry.scorer_inputs(hist, exclude, bias, k))
    with torch.no_grad():
        want = TopNScorer(model).eval()(
            torch.from_numpy(hist),
            torch.from_numpy(exclude),
            torch.from_numpy(bias),
            torch.zeros(k),
        )
    want_s, want_i, want_b = (t.numpy() for t in want)

    assert got_s.shape == got_i.shape == got_b.shape == (batch, k)
    assert np.isfinite(want_s).all()
    assert np.allclose(got_s, want_s, atol=1e-4, rtol=0)
    # ids must agree wherever the score is not tied with a neighbour within tolerance
    gaps = np.diff(want_s, axis=1)
    untied = np.ones_like(want_s, dtype=bool)
    untied[:, 1:] &= np.abs(gaps) > 1e-4
    untied[:, :-1] &= np.abs(gaps) > 1e-4
    assert untied.mean() > 0.9
    assert np.array_equal(got_i[untied], want_i[untied])
    assert np.array_equal(got_b[untied], want_b[untied])
    # masking holds in the exported graph: no padding, inactive or excluded item
    for row in range(batch):
        assert not set(got_i[row]) & ({0, *inactive.tolist()} | set(exclude[row].tolist()))
    # the saved weights (neighbour tables included) give the same scores back
    again = Encoder.from_state(torch.load(folder / "encoder.pt"), model.cfg)
    assert again.fused == model.fused
    with torch.no_grad():
        items = model.item_vectors()
        assert torch.equal(
            again.scores(torch.from_numpy(hist), items), model.scores(torch.from_numpy(hist), items)
        )
        plain = model.user_vectors(torch.from_numpy(hist), items) @ items.T
        # fused scores differ from the encoder's alone, so the parity above covers the scatter
        assert torch.equal(model.scores(torch.from_numpy(hist), items), plain) != model.fused
        assert set(got_b[row]) <= set(hist[row][hist[row] > 0].tolist())
    # scores are the model's: the user vector against the item vectors
    with torch.no_grad():
        items = model.item_vectors()
        direct = torch.gather(
            model.scores(torch.from_numpy(hist), items), 1, torch.from_numpy(got_i)
        ).numpy()
    assert np.allclose(got_s, direct, atol=1e-4)


def test_registry_verify_detects_a_tampered_file(exported, tmp_path: Path) -> None:
    _, folder = exported
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    assert registry.verify(copy)["version"] == "v-parity"
    registry.promote(tmp_path, folder.name)
    with (copy / "items.parquet").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ContractError, match="checksum mismatch"):
        registry.verify(copy)
    with pytest.raises(ContractError):
        registry.current(tmp_path)  # the promoted version is checked on every read
    with pytest.raises(ContractError, match="checksum mismatch"):
        registry.promote(tmp_path, folder.name)  # and a corrupt version is never promoted
    (copy / "scorer.onnx").unlink()
    with pytest.raises(ContractError):
        registry.verify(copy)


def copy_version(folder: Path, dest: Path) -> Path:
    """A copy of a version folder as version ``dest.name``, sealed as an export would seal it."""
    shutil.copytree(folder, dest)
    manifest = json.loads((dest / registry.MANIFEST).read_text())
    registry.write_manifest(dest, {**manifest, "version": dest.name})
    return dest


def test_registry_promote_and_current(exported, tmp_path: Path) -> None:
    _, folder = exported
    with pytest.raises(ContractError, match="no promoted model"):
        registry.current(tmp_path)
    for name in ("v1", "v2"):
        copy_version(folder, tmp_path / name)
    registry.promote(tmp_path, "v1")
    assert registry.current(tmp_path) == (tmp_path / "v1").resolve()
    registry.promote(tmp_path, "v2")
    assert registry.current(tmp_path) == (tmp_path / "v2").resolve()
    assert (tmp_path / "current").is_symlink()
    with pytest.raises(ContractError, match="no such version"):
        registry.promote(tmp_path, "v3")
    with pytest.raises(ContractError):
        registry.promote(tmp_path, "../v1")
    assert registry.current(tmp_path) == (tmp_path / "v2").resolve()  # unchanged by failures


# ---------------------------------------------------------------- planted pattern

ITEMS = [  # id, title, category
    ("i01", "Hydrating Face Serum", "Skincare"),
    ("i02", "Vitamin C Brightening Toner", "Skincare"),
    ("i03", "Retinol Night Cream", "Skincare"),
    ("i04", "Gentle Gel Cleanser", "Skincare"),
    ("i05", "Argan Repair Shampoo", "Hair Care"),
    ("i06", "Keratin Smoothing Conditioner", "Hair Care"),
    ("i07", "Anti-Frizz Hair Oil", "Hair Care"),
    ("i08", "Volumizing Dry Shampoo", "Hair Care"),
    ("i09", "Matte Velvet Lipstick", "Makeup"),
    ("i10", "Waterproof Mascara", "Makeup"),
    ("i11", "Full-Coverage Foundation", "Makeup"),
    ("i12", "Shimmer Eyeshadow Palette", "Makeup"),
]
# two planted follow-ups across categories: text alone does not explain them, and B and
# D are equally popular, so only the user's last item tells which one comes next
A, B = "i01", "i10"  # face serum -> mascara
C, D = "i07", "i04"  # hair oil -> gel cleanser
HELD_A = [f"held_a{n}" for n in range(4)]
HELD_C = [f"held_c{n}" for n in range(4)]
PLANTED_CFG = TrainConfig(dim=32, epochs=20, batch_size=64, lr=1e-2, seed=3)


def _write_planted(landing: Path, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    ids = [i for i, _, _ in ITEMS]
    filler = [i for i in ids if i not in (A, B, C, D)]
    write_csv(
        landing / "items" / "items.csv",
        "item_id,title,category",
        [f"{i},{t},{c}" for i, t, c in ITEMS],
    )

    def pick(pool: list[str], lo: int, hi: int) -> list[str]:
        return list(rng.choice(pool, size=int(rng.integers(lo, hi + 1)), replace=False))

    histories: dict[str, list[str]] = {}
    for n in range(60):  # ... A, B, ...
        pre, post = pick(filler, 0, 3), pick(filler, 0, 2)
        histories[f"pa{n:03d}"] = [x for x in pre if x not in post] + [A, B] + post
    for n in range(60):  # ... C, D, ...
        pre, post = pick(filler, 0, 3), pick(filler, 0, 2)
        histories[f"pc{n:03d}"] = [x for x in pre if x not in post] + [C, D] + post
    n = 0
    while n < 30:  # random users, without either planted pair
        seq = pick(ids, 3, 6)
        if any(seq[j : j + 2] in ([A, B], [C, D]) for j in range(len(seq) - 1)):
            continue
        histories[f"r{n:03d}"] = seq
        n += 1
    for user in HELD_A:
        histories[user] = pick([x for x in ids if x not in (A, B)], 1, 3) + [A]
    for user in HELD_C:
        histories[user] = pick([x for x in ids if x not in (C, D)], 1, 3) + [C]

    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    rows = []
    for u, (user, seq) in enumerate(sorted(histories.items())):
        t = start + dt.timedelta(hours=3 * u)
        for step, item in enumerate(seq):
            ts = t + dt.timedelta(minutes=10 * step)
            assert ts.date() < AS_OF
            rows.append(f"{user},{item},view,{ts:%Y-%m-%dT%H:%M:%SZ}")
    write_csv(landing / "events" / "events.csv", "user_id,item_id,event_type,ts", rows)
    write_csv(landing / "users" / "users.csv", "user_id", sorted(histories))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("planted")
    settings = Settings.from_env(home=root / "home", models_dir=root / "models")
    _write_planted(settings.landing)
    totals = ingest.ingest(settings).totals
    assert totals["rejected"] == 0 and totals["duplicates"] == 0
    snap = snapshot.snapshot(settings, AS_OF)
    embed.embed(settings, snap)
    version = train.train(settings, snap, AS_OF, PLANTED_CFG)
    return {"settings": settings, "snapshot": snap, "version": version}


def _published(settings: Settings) -> pl.DataFrame:
    con = duckdb.connect(str(settings.serving / "current" / publish.SERVING_DB), read_only=True)
    try:
        return pl.from_arrow(
            con.sql(
                "select user_id, rank, item_id, reason, because_item_id from recommendations "
                "order by user_id, rank"
            ).to_arrow_table()
        )
    finally:
        con.close()


def test_model_learns_planted_follow_ups(planted) -> None:
    settings, snap = planted["settings"], planted["snapshot"]
    stats = score.score(
        settings, snap, "planted", ScoreConfig(top_n=5, provider="cpu"), planted["version"]
    )
    assert stats["model_version"] == planted["version"]
    publish.publish(settings, "planted", AS_OF)
    recs = _published(settings)

    def ranks(users: list[str], item: str) -> list[int | None]:
        out = []
        for user in users:
            mine = recs.filter(pl.col("user_id") == user)
            assert mine.height == 5 and set(mine["reason"]) == {"history"}
            hit = mine.filter(pl.col("item_id") == item)
            out.append(hit["rank"][0] if hit.height else None)
        return out

    rank_b, rank_d = ranks(HELD_A, B), ranks(HELD_C, D)
    assert rank_b == [1] * len(HELD_A), f"B ranks for users ending in A: {rank_b}"
    assert rank_d == [1] * len(HELD_C), f"D ranks for users ending in C: {rank_d}"
    # the "because" item is always one the user has seen
    con = duckdb.connect(str(settings.warehouse), read_only=True)
    try:
        seen = set(con.execute("select user_id, item_id from events").fetchall())
    finally:
        con.close()
    held = recs.filter(pl.col("user_id").is_in(HELD_A + HELD_C))
    assert all(
        (u, b) in seen for u, b in zip(held["user_id"], held["because_item_id"], strict=True)
    )


def _scorer_outputs(version_dir: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    n = len(ITEMS)
    hist = np.zeros((9, PLANTED_CFG.max_history), dtype=np.int64)
    for row in range(9):
        k = int(rng.integers(1, 5))
        hist[row, -k:] = rng.choice(np.arange(1, n + 1), size=k, replace=False)
    exclude = hist[:, -4:].copy()
    bias = np.zeros(n + 1, dtype=np.float32)
    bias[0] = -np.inf
    sess = ort.InferenceSession(
        str(version_dir / registry.SCORER), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, registry.scorer_inputs(hist, exclude, bias, 6))


@pytest.fixture
def two_torch_threads():
    """Intra-op parallelism on: a thread-order dependent sum can only show with 2+ threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_train_steps_budget_counts_reading_the_snapshot(
    planted, tmp_path: Path, monkeypatch
) -> None:
    """Reading the snapshot is in the budget: a step that took 3.5 s to read it, with a
    budget of 3 s, trains one epoch (the first always runs) and stops, where the epochs
    alone (a fraction of a second each here) would have run on."""
    real = train.load_sequences

    def slow(*args, **kwargs):
        time.sleep(3.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "load_sequences", slow)
    settings = dataclasses.replace(planted["settings"], models_dir=tmp_path / "models")
    cfg = dataclasses.replace(PLANTED_CFG, max_train_seconds=3.0)
    version = train.train(settings, planted["snapshot"], AS_OF, cfg)
    metrics = registry.verify(settings.models_dir / version)["metrics"]
    assert metrics["epochs_run"] == 1 and metrics["stopped_by"].startswith("time budget of 3s")
    assert metrics["fit_seconds"] < 3.0 <= metrics["train_seconds"]  # the fit alone: within


def test_training_is_deterministic(planted, tmp_path: Path, two_torch_threads, monkeypatch) -> None:
    monkeypatch.setenv(train.DEVICE_ENV, "cpu")  # bit for bit on the CPU (CUDA: see below)
    cfg = dataclasses.replace(PLANTED_CFG, epochs=3)  # short: it runs twice, on two threads
    one = dataclasses.replace(planted["settings"], models_dir=tmp_path / "one")
    two = dataclasses.replace(planted["settings"], models_dir=tmp_path / "two")
    version = train.train(one, planted["snapshot"], AS_OF, cfg)
    assert train.train(two, planted["snapshot"], AS_OF, cfg) == version
    dir1, dir2 = one.models_dir / version, two.models_dir / version
    m1, m2 = registry.verify(dir1), registry.verify(dir2)
    assert m1["metrics"]["train_loss"] == m2["metrics"]["train_loss"]
    s1 = torch.load(dir1 / "encoder.pt")
    s2 = torch.load(dir2 / "encoder.pt")
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    out1, out2 = _scorer_outputs(dir1), _scorer_outputs(dir2)
    for a, b in zip(out1, out2, strict=True):
        assert np.array_equal(a, b)
    # another config is another version and another model: the comparison above can fail
    assert version != planted["version"]
    other = _scorer_outputs(planted["settings"].models_dir / planted["version"])
    assert not np.array_equal(out1[0], other[0])


def test_sampled_softmax_training_is_deterministic(
    planted, two_torch_threads, caplog, monkeypatch
) -> None:
    monkeypatch.setenv(train.DEVICE_ENV, "cpu")
    snap = planted["snapshot"]
    catalog = train.load_catalog(snap)
    cfg = dataclasses.replace(PLANTED_CFG, epochs=2, negatives=4)  # 12 items > 2 x 4: sampled
    hist, target, _ = train.training_examples(train.load_sequences(snap, catalog), cfg)
    text = embed.load_embeddings(snap)
    with caplog.at_level("INFO", logger="nightrec.train"):
        m1, loss1 = train.fit(text, hist, target, cfg)
    assert any("sampled softmax" in r.getMessage() for r in caplog.records)
    m2, loss2 = train.fit(text, hist, target, cfg)
    assert loss1 == loss2 and np.isfinite(loss1).all()
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_the_training_device_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(train.DEVICE_ENV, raising=False)
    assert train.train_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(train.DEVICE_ENV, " CPU ")
    assert train.train_device() == "cpu"
    monkeypatch.setenv(train.DEVICE_ENV, "gpu0")
    with pytest.raises(ContractError, match="must be auto, cpu or cuda, got 'gpu0'"):
        train.train_device()
    monkeypatch.setenv(train.DEVICE_ENV, "cuda")
    if torch.cuda.is_available():
        assert train.train_device() == "cuda"
    else:
        with pytest.raises(ContractError, match="sees no CUDA device"):
            train.train_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_training_on_cuda_learns_the_planted_follow_ups(
    planted, tmp_path: Path, monkeypatch
) -> None:
    """The epoch choice and the refit on the GPU: the same planted lists as on the CPU."""
    monkeypatch.setenv(train.DEVICE_ENV, "cuda")
    settings = dataclasses.replace(planted["settings"], models_dir=tmp_path / "models")
    version = train.train(settings, planted["snapshot"], AS_OF, PLANTED_CFG)
    folder, manifest = registry.load_version(settings.models_dir, version)
    assert manifest["metrics"]["device"] == "cuda"
    items = pl.read_parquet(folder / "items.parquet").sort("idx")["item_id"].to_list()
    idx = {item: i + 1 for i, item in enumerate(items)}
    hist = np.zeros((2, PLANTED_CFG.max_history), dtype=np.int64)
    hist[0, -1], hist[1, -1] = idx[A], idx[C]
    bias = np.zeros(len(items) + 1, dtype=np.float32)
    bias[0] = -np.inf
    sess = ort.InferenceSession(str(folder / registry.SCORER), providers=["CPUExecutionProvider"])
    top = sess.run(None, registry.scorer_inputs(hist, hist, bias, 1))[1][:, 0]
    assert [items[i - 1] for i in top] == [B, D]


def test_sampled_logits_project_each_item_once_with_the_plain_logits_and_gradients() -> None:
    """A sampled-softmax step projects each distinct item of the histories and candidates
    once; its logits and every gradient are those of looking each slot up on its own."""
    n = 30
    text, hist, target = _next_item_examples(3, n)
    cfg = TrainConfig(dim=8, max_history=3, dropout=0.0)
    model = Encoder(torch.from_numpy(np.vstack([np.zeros((1, 8), np.float32), text])), cfg)
    h, t = torch.from_numpy(hist[:40]), torch.from_numpy(target[:40])
    h[:5, 0] = 0  # padding in some windows
    negatives = torch.tensor([3, 7, 7, 29, 1])
    log_q = torch.linspace(-3.0, -1.0, n + 1)
    keep = (torch.arange(n + 1) % 4 != 0).float()  # some id parts dropped
    codes = torch.zeros_like(h)

    def run(fast: bool):
        model.zero_grad()
        if fast:
            logits, labels = model.sampled_logits(h, t, negatives, log_q, keep, codes)
        else:
            cand = torch.unique(torch.cat([t, negatives]))
            labels = torch.searchsorted(cand, t)
            users = model._user(h, None, keep, codes)  # each slot projected on its own
            logits = users @ model._items(cand, keep).T - log_q[cand]
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), labels, grads

    fast, slow = run(True), run(False)
    assert torch.equal(fast[1], slow[1])
    assert torch.allclose(fast[0], slow[0], atol=1e-5)
    assert fast[2].keys() == slow[2].keys() and "proj.weight" in fast[2]
    for k in fast[2]:
        assert torch.allclose(fast[2][k], slow[2][k], atol=1e-5), k


def test_id_dropout_on_the_looked_up_rows_is_the_whole_tables_bit_for_bit() -> None:
    """A step drops id parts on the rows it looks up, not on the whole item table (and its
    gradient): the same vectors and the same gradients, bit for bit, as the table's."""
    torch.manual_seed(1)
    n, dim = 500, 16
    model = Encoder(torch.randn(n + 1, 24), TrainConfig(dim=dim, max_history=4))
    with torch.no_grad():
        model.item_id.weight.normal_()
    idx = torch.randint(0, n + 1, (64, 4))  # repeats and padding among them
    keep = (torch.rand(n + 1) >= 0.3).float()
    weights = torch.randn(64, 4, dim)

    def run(rows: bool):
        model.zero_grad()
        if rows:
            out = model._items(idx, keep)
        else:  # the whole table dropped, then looked up
            ids = model.item_id.weight * keep.unsqueeze(1)
            out = model.proj(model.text[idx]) + torch.nn.functional.embedding(idx, ids)
        (out * weights).sum().backward()
        return out.detach(), model.item_id.weight.grad.clone(), model.proj.weight.grad.clone()

    for a, b in zip(run(True), run(False), strict=True):
        assert torch.equal(a, b)
    assert keep.min() == 0 and run(True)[1][keep == 0].abs().sum() == 0  # dropped: no update


def test_dropout_keeps_the_expected_share_and_is_off_when_scoring() -> None:
    """The history's dropout (drawn from ``torch.rand``) zeroes about ``dropout`` of the
    entries and scales the rest by 1 / (1 - dropout); in eval mode it is the identity."""
    cfg = TrainConfig(dim=8, max_history=3, dropout=0.65)
    model = Encoder(torch.zeros(5, 4), cfg).train()
    x = torch.ones(200, 20, 8)
    y = model._dropout(x)
    assert abs(float((y == 0).float().mean()) - 0.65) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.35))
    assert torch.equal(model.eval()._dropout(x), x)


# ---------------------------------------------------------------- two-stage top-N


class _TwoStage(torch.nn.Module):
    """Only the scorer's two-stage top-N, on given scores (ties made on purpose)."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def forward(self, scores: torch.Tensor, k_like: torch.Tensor):
        return TopNScorer._two_stage(self, scores, k_like.shape[0])  # type: ignore[arg-type]


def _reference_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every row fully sorted by score descending, ties by lower index."""
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores))
    top = order[:, :k]
    return np.take_along_axis(scores, top, axis=1), top


@pytest.mark.parametrize("k", [1, 5, 40])
def test_two_stage_top_n_is_exact_with_ties_in_onnx(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    block, blocks = 4, 50
    # few distinct values: ties inside blocks, across blocks and at the N-th place
    scores = rng.integers(0, 6, (9, block * blocks)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf  # masked items tie too
    scores[0] = 3.0  # a row of one value: the lowest indices win
    path = tmp_path / "two_stage.onnx"
    torch.onnx.export(
        _TwoStage(block),
        (torch.from_numpy(scores[:2]), torch.zeros(3)),
        str(path),
        dynamo=True,
        input_names=["scores", "k_like"],
        dynamic_shapes={
            "scores": {0: torch.export.Dim("batch", min=1)},
            "k_like": {0: torch.export.Dim("k", min=1, max=blocks)},
        },
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_s, got_i = sess.run(None, {"scores": scores, "k_like": np.zeros(k, np.float32)})
    want_s, want_i = _reference_top(scores, k)
    assert np.array_equal(got_s, want_s)
    finite = np.isfinite(want_s)  # among -inf the order is irrelevant: never published
    assert np.array_equal(got_i[finite], want_i[finite])
    assert got_i[0].tolist() == list(range(k))


PROVIDERS = [
    "CPUExecutionProvider",
    pytest.param(
        "CUDAExecutionProvider",
        marks=pytest.mark.skipif(
            not cuda_in_onnxruntime(),
            reason="ONNX Runtime's CUDA provider cannot run here (onnxruntime-gpu, a GPU)",
        ),
    ),
]


BIG_ITEMS, BIG_LENGTH = 3999, 8  # a catalog big enough for the two-stage top-N


def big_catalog(tmp_path: Path, fused: bool, **export) -> tuple[Encoder, Path, np.random.Generator]:
    """An untrained encoder over ``BIG_ITEMS`` items (neighbour terms when ``fused``),
    exported to ``tmp_path`` (``export``: more of ``registry.export``'s arguments); and
    the random stream the queries come from (``big_queries``)."""
    torch.manual_seed(5)
    text = torch.randn(BIG_ITEMS + 1, 8)
    text[0] = 0.0
    cfg = TrainConfig(dim=16, max_history=BIG_LENGTH)
    model = Encoder(text, cfg).eval()
    rng = np.random.default_rng(9)
    if fused:
        examples = rng.integers(0, BIG_ITEMS + 1, (20_000, BIG_LENGTH))
        targets = rng.integers(1, BIG_ITEMS + 1, 20_000)
        model.set_neighbours(fusion.tables(examples, targets, BIG_ITEMS + 1, 20), 2.0, 1.0)
        assert model.fused
    ids = np.arange(1, BIG_ITEMS + 1)
    index = pl.DataFrame({"item_id": [f"i{i:05d}" for i in ids], "idx": ids})
    example = rng.integers(1, BIG_ITEMS + 1, (8, BIG_LENGTH))
    cfg_dict = dataclasses.asdict(cfg)
    folder = registry.export(model, tmp_path, "v-big", index, cfg_dict, {}, example, **export)
    return model, folder, rng


def big_queries(
    model: Encoder, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """64 histories (some short), their seen items (more than the history), an item bias
    with 300 inactive items, and the NumPy reference's scores of every item with those
    masked: (hist, seen, bias, full)."""
    hist = rng.integers(1, BIG_ITEMS + 1, (64, BIG_LENGTH))
    hist[:10, :5] = 0  # short histories
    seen = np.concatenate([hist, rng.integers(1, BIG_ITEMS + 1, (64, 30))], axis=1)
    bias = np.zeros(BIG_ITEMS + 1, np.float32)
    bias[0] = -np.inf
    bias[rng.choice(np.arange(1, BIG_ITEMS + 1), 300, replace=False)] = -np.inf
    return hist, seen, bias, masked_reference(model, hist, seen, bias)


def masked_reference(model: Encoder, hist, seen, bias) -> np.ndarray:
    """[B, M + 1] the encoder's scores of every item plus ``bias``, ``seen`` at -inf."""
    with torch.no_grad():
        full = model.scores(torch.from_numpy(hist), model.item_vectors()).numpy() + bias
    np.put_along_axis(full, seen, -np.inf, axis=1)
    return full


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("fused", [False, True])
def test_large_catalog_scorer_matches_brute_force(
    tmp_path: Path, fused: bool, provider: str
) -> None:
    """A catalog big enough for the two-stage top-N: ONNX against a NumPy reference over
    every item, with inactive and seen items masked (and neighbour terms when fused), on
    every execution provider this host has."""
    model, folder, rng = big_catalog(tmp_path, fused)
    scorer = TopNScorer(model)
    assert scorer.block > 1 and scorer.item_matrix.shape[0] % scorer.block == 0
    sess = ort.InferenceSession(str(folder / registry.SCORER), providers=[provider])
    assert sess.get_providers()[0] == provider

    hist, seen, bias, full = big_queries(model, rng)
    for k in (1, 100, 1000):
        got_s, got_i, _ = sess.run(None, registry.scorer_inputs(hist, seen, bias, k))
        want_s, want_i = _reference_top(full, k)
        assert np.allclose(got_s, want_s, atol=1e-4, rtol=0)
        gaps = np.abs(np.diff(want_s, axis=1)) > 1e-4
        untied = np.ones_like(want_s, dtype=bool)
        untied[:, 1:] &= gaps
        untied[:, :-1] &= gaps
        assert untied.mean() > 0.9
        assert np.array_equal(got_i[untied], want_i[untied])
        for row in range(len(hist)):  # never a seen, inactive or padding item
            assert not set(got_i[row]) & (set(seen[row]) | set(np.flatnonzero(bias < 0)))
    # most of the catalog inactive (the scorer drops -inf items with the seen ones, so
    # that scatter is then nearly catalog-wide): still the reference's lists
    bias[rng.choice(np.arange(1, BIG_ITEMS + 1), 3600, replace=False)] = -np.inf
    full = masked_reference(model, hist, seen, bias)
    got_s, got_i, _ = sess.run(None, registry.scorer_inputs(hist, seen, bias, 100))
    want_s, want_i = _reference_top(full, 100)
    assert np.allclose(got_s, want_s, atol=1e-4, rtol=0)
    assert np.array_equal(got_i[np.isfinite(want_s)], want_i[np.isfinite(want_s)])
    assert not set(got_i[np.isfinite(got_s)]) & set(np.flatnonzero(bias < 0))
    # the bias is a mask, not a weight: anything but 0 / -inf is refused
    bias[5] = 0.5
    with pytest.raises(ValueError, match="0 .rankable. or -inf"):
        score.run_scorer(sess, hist, seen, (seen > 0).sum(1), bias, 10, 64)


def test_refit_learns_from_the_examples_held_out_to_choose_the_epoch() -> None:
    rng = np.random.default_rng(4)
    n = 30
    text = rng.normal(size=(n, 8)).astype(np.float32)
    hist = rng.integers(1, n, (400, 3))  # items 1..29; 30 only as a held-out target
    target = rng.integers(1, n, 400)
    cfg = TrainConfig(
        dim=8, max_history=3, epochs=3, patience=1, valid_share=0.2, min_valid=10,
        neighbours=0, batch_size=64, negatives=0, dropout=0.3, cold_borrow=False, refit=False,
    )  # fmt: skip
    valid = train.holdout(len(target), cfg)
    target[np.flatnonzero(valid)[:5]] = n
    plain, _ = train.fit(text, hist, target, cfg)
    again, _ = train.fit(text, hist, target, dataclasses.replace(cfg, refit=True))
    # without the refit, 30 was never trained (text alone: no borrowing here); the refit did
    assert not plain.item_id.weight[n].any()
    assert again.item_id.weight[n].abs().sum() > 0
    assert plain.fit_info["refit_seconds"] is None
    assert again.fit_info["refit_seconds"] is not None
    assert again.fit_info["best_epoch"] == plain.fit_info["best_epoch"]  # chosen the same way
    # the same recipe again gives the same weights (dropout included)
    third, _ = train.fit(text, hist, target, dataclasses.replace(cfg, refit=True))
    s1, s2 = again.state_dict(), third.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def _next_item_examples(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text [n, 8], histories [600, 3] of items 1..n, targets): learnable, the next item
    after the last one."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(n, 8)).astype(np.float32)
    hist = rng.integers(1, n + 1, (600, 3))
    return text, hist, (hist[:, -1] % n) + 1


def _two_cooldowns():
    """Examples and a config on which both of two cooldown epochs help (and are kept)."""
    text, hist, target = _next_item_examples(5, 40)
    cfg = TrainConfig(
        dim=8, max_history=3, epochs=6, patience=2, valid_share=0.2, min_valid=10,
        neighbours=0, batch_size=64, negatives=0, dropout=0.3, cooldown=2,
    )  # fmt: skip
    return text, hist, target, cfg


def test_refit_beside_the_epoch_choice_gives_the_same_weights(monkeypatch, caplog) -> None:
    """The refit in a spawned process (told the best epoch as the choice goes, the one to
    keep at the end) trains exactly the weights it trains after the choice, here."""
    text, hist, target, cfg = _two_cooldowns()
    here, _ = train.fit(text, hist, target, cfg)
    assert not here.fit_info["refit_beside"]
    # both cooldown epochs raised the held-out NDCG@10, so both were kept (and refitted)
    info = here.fit_info
    assert info["cooldown_epochs"] == 2 and info["epochs_run"] == info["best_epoch"] + 2
    assert info["valid_ndcg10"] > info["valid_ndcg10_before_cooldown"]
    monkeypatch.setattr(train, "PARALLEL_EXAMPLES", 0)
    monkeypatch.setenv("NIGHTREC_WORKERS", "2")
    monkeypatch.setattr("nightrec.workers.cpus", lambda: 2)  # one torch thread each, as here
    with caplog.at_level("INFO", logger="nightrec.train"):
        beside, _ = train.fit(text, hist, target, cfg)
    assert beside.fit_info["refit_beside"]
    assert beside.fit_info["best_epoch"] == here.fit_info["best_epoch"]
    assert beside.fit_info["cooldown_epochs"] == 2
    assert torch.get_num_threads() == 1  # given back
    s1, s2 = here.state_dict(), beside.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    lines = [r.getMessage() for r in caplog.records if r.processName == "refit"]
    assert any("refit epoch 1 loss" in m for m in lines)  # the worker's log, here
    assert any("refit cooldown epoch 2 loss" in m for m in lines)


def test_the_learning_rate_decays_per_epoch_in_the_choice_and_in_the_refit() -> None:
    """Epoch e trains at lr x lr_decay^e, in the epoch choice and in the refit: with a decay
    so steep that every epoch after the first moves nothing, the held-out NDCG@10 stops
    improving after epoch 1, and three refit epochs give the weights of one."""
    n = 40
    text, hist, target = _next_item_examples(5, n)
    cfg = TrainConfig(
        dim=8, max_history=3, epochs=6, patience=2, valid_share=0.2, min_valid=10,
        neighbours=0, batch_size=64, negatives=0, dropout=0.3, cooldown=0, lr_decay=1e-9,
        refit=False,
    )  # fmt: skip
    model, losses = train.fit(text, hist, target, cfg)
    assert model.fit_info["best_epoch"] == 1 and model.fit_info["epochs_run"] == 3
    plain, _ = train.fit(text, hist, target, dataclasses.replace(cfg, lr_decay=1.0))
    assert plain.fit_info["best_epoch"] > 1  # without the decay, later epochs do improve

    emb = torch.from_numpy(np.vstack([np.zeros((1, 8), np.float32), text]))
    codes = np.zeros_like(hist)
    smap = torch.zeros(11, dtype=torch.int64)

    def refit(c: TrainConfig, epochs: int) -> dict:
        state, _ = train._refit(emb, hist, target, codes, c, smap, train._Fixed(epochs, 0))
        return state

    one, three = refit(cfg, 1), refit(cfg, 3)
    assert all(torch.allclose(one[k], three[k], atol=1e-6) for k in one)
    flat = dataclasses.replace(cfg, lr_decay=1.0)
    one, three = refit(flat, 1), refit(flat, 3)
    assert not all(torch.allclose(one[k], three[k], atol=1e-6) for k in one)


def test_a_pair_serves_the_mean_of_the_refit_and_the_chosen_model() -> None:
    """With ``ensemble`` the served model is the refit paired with the model that chose the
    epoch: its score is the mean of the two members' scores plus the neighbour terms once,
    and it saves and loads as a pair."""
    n = 40
    text, hist, target = _next_item_examples(8, n)
    cfg = TrainConfig(
        dim=8, max_history=3, epochs=3, patience=2, valid_share=0.2, min_valid=10,
        neighbours=5, batch_size=64, negatives=0, dropout=0.3,
    )  # fmt: skip
    single, _ = train.fit(text, hist, target, dataclasses.replace(cfg, ensemble=False))
    pair, _ = train.fit(text, hist, target, cfg)
    assert single.twin is None and not single.fit_info["ensemble"]
    assert pair.twin is not None and pair.fit_info["ensemble"]
    # the second member is the model that chose the epoch (as without a refit); the refit
    # starts from another seed than it does alone
    alone, _ = train.fit(text, hist, target, dataclasses.replace(cfg, refit=False))
    chosen = pair.twin
    assert torch.equal(chosen.item_id.weight, alone.item_id.weight)
    assert torch.equal(chosen.user_mlp[0].weight, alone.user_mlp[0].weight)
    assert not torch.equal(pair.item_id.weight, single.item_id.weight)
    h = torch.from_numpy(hist[:50])
    with torch.no_grad():
        items = pair.item_vectors()
        assert items.shape == (n + 1, 2 * cfg.dim)
        got = pair.scores(h, items)
        first = pair._user(h, items[:, : cfg.dim], None, None) @ items[:, : cfg.dim].T
        second = chosen.user_vectors(h) @ chosen.item_vectors().T
        want = pair.add_neighbours(h, (first + second) / 2)
        assert pair.fused and not chosen.fused  # the pair's tables, added once
        assert torch.allclose(got, want, atol=1e-5)
    again = Encoder.from_state(pair.state_dict(), cfg)
    assert again.twin is not None
    with torch.no_grad():
        assert torch.equal(again.scores(h, again.item_vectors()), got)


def test_the_time_budget_also_bounds_the_cooldown() -> None:
    """A budget that one epoch already spends leaves no room for a cooldown epoch: it is
    not run (before, the first epoch and the cooldown always ran, whatever the budget)."""
    text, hist, target, cfg = _two_cooldowns()
    roomy, _ = train.fit(text, hist, target, cfg)
    assert roomy.fit_info["cooldown_epochs"] == 2  # the same data, with the default budget
    tight, _ = train.fit(text, hist, target, dataclasses.replace(cfg, max_train_seconds=1e-6))
    info = tight.fit_info
    assert info["epochs_run"] == info["best_epoch"] == 1 and info["cooldown_epochs"] == 0
    assert "no cooldown epoch 1: time budget" in info["stopped_by"]
    assert info["valid_ndcg10"] == info["valid_ndcg10_before_cooldown"]


def test_the_time_budget_counts_the_whole_train_step() -> None:
    """The budget counts from the train step's start (``started``: reading the snapshot is
    in it) and keeps room for the work after the epochs: an epoch that would end inside
    the budget but leave no room for that work is not started."""
    text, hist, target, cfg = _two_cooldowns()
    spent = time.perf_counter() - cfg.max_train_seconds  # a step that began a budget ago
    late, _ = train.fit(text, hist, target, cfg, started=spent)
    info = late.fit_info
    assert info["epochs_run"] == info["best_epoch"] == 1 and info["cooldown_epochs"] == 0
    assert "no cooldown epoch 1: time budget" in info["stopped_by"]
    budget = dataclasses.replace(cfg, max_train_seconds=420.0)
    now = time.perf_counter()
    # 300 s gone, epochs of 100 s: the epoch alone would end at 400 s, but with the work
    # after it (a quarter of an epoch) at 425 s, past 420
    assert train.TAIL_SHARE == 0.25
    assert not train._room(now - 300.0, 100.0, 1, budget)
    assert train._room(now - 290.0, 100.0, 1, budget)  # 415 s: fits
    assert not train._room(now - 100.0, 100.0, 3, budget)  # 100 + 325 s
    assert train._room(now - 90.0, 100.0, 3, budget)
    # the epochs one more commits to: it and the cooldown; with the refit after the choice,
    # the refit's too (3 done + the next + the cooldown)
    assert train._ahead(3, 1, refit_after=False) == 2
    assert train._ahead(3, 1, refit_after=True) == 2 + 5
    assert train._ahead(4 + 0, 0, refit_after=True) == 1 + 5  # cooldown 1 after epoch 4


def test_the_time_budget_defaults_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("NIGHTREC_MAX_TRAIN_SECONDS", raising=False)
    assert TrainConfig().max_train_seconds == 420.0
    monkeypatch.setenv("NIGHTREC_MAX_TRAIN_SECONDS", " 1800 ")
    assert TrainConfig().max_train_seconds == 1800.0
    assert TrainConfig(max_train_seconds=60).max_train_seconds == 60  # an explicit value wins
    monkeypatch.setenv("NIGHTREC_MAX_TRAIN_SECONDS", "")
    assert TrainConfig().max_train_seconds == 420.0  # blank: the default (docker-compose)
    monkeypatch.setenv("NIGHTREC_MAX_TRAIN_SECONDS", "ten minutes")
    with pytest.raises(ContractError, match="NIGHTREC_MAX_TRAIN_SECONDS.*'ten minutes'"):
        TrainConfig()
    monkeypatch.setenv("NIGHTREC_MAX_TRAIN_SECONDS", "-5")
    with pytest.raises(ContractError, match="NIGHTREC_MAX_TRAIN_SECONDS must be .* got -5"):
        TrainConfig()
    with pytest.raises(ContractError, match="^max_train_seconds must be"):  # not the env's
        TrainConfig(max_train_seconds=0)
    monkeypatch.delenv("NIGHTREC_MAX_TRAIN_SECONDS")
    # 420 from a DAG Param and 420.0 by default: one config, so one version id
    given = TrainConfig(max_train_seconds=420)
    assert isinstance(given.max_train_seconds, float)
    assert json.dumps(dataclasses.asdict(given)) == json.dumps(dataclasses.asdict(TrainConfig()))


def test_a_cooldown_epoch_is_kept_only_when_it_helps() -> None:
    """With no cooldown the fit is the plain one; a cooldown that cannot help (a learning
    rate too small to move the weights) is tried and dropped: the same weights as none."""
    n = 40
    text, hist, target = _next_item_examples(6, n)
    cfg = TrainConfig(
        dim=8, max_history=3, epochs=4, patience=2, valid_share=0.2, min_valid=10,
        neighbours=0, batch_size=64, negatives=0, dropout=0.3, cooldown=0,
    )  # fmt: skip
    plain, _ = train.fit(text, hist, target, cfg)
    assert plain.fit_info["cooldown_epochs"] == 0
    tiny, _ = train.fit(text, hist, target, dataclasses.replace(cfg, cooldown=1, cooldown_lr=1e-12))
    assert tiny.fit_info["cooldown_epochs"] == 0
    assert tiny.fit_info["valid_ndcg10"] == plain.fit_info["valid_ndcg10"]
    s1, s2 = plain.state_dict(), tiny.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
