"""Evaluation: hand-computed metrics, leak-free splits, baselines with known answers, the
warehouse rows, the gate and the report."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from nightrec import baselines, embed, eval_store, evaluate, metrics, report, splits, train
from nightrec.config import ContractError, EvalConfig, Settings, TrainConfig


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models train fastest on one thread (see test_model.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- metrics by hand


def test_metrics_match_hand_computed_values() -> None:
    lists = np.array([[3, 1, 2], [5, 4, -1], [7, 8, 9]])
    targets = np.array([1, 4, 6])  # ranks 2, 2 and absent
    ranks = metrics.target_ranks(lists, targets)
    assert ranks.tolist() == [2, 2, 0]
    assert metrics.hit_rate(ranks, 1).mean() == 0.0
    assert metrics.hit_rate(ranks, 2).mean() == pytest.approx(2 / 3)
    assert metrics.ndcg(ranks, 2).mean() == pytest.approx(2 / math.log2(3) / 3)
    assert metrics.mrr(ranks, 3).mean() == pytest.approx((0.5 + 0.5) / 3)
    assert metrics.precision(ranks, 2).mean() == pytest.approx((2 / 3) / 2)
    # one target: P = 1/2, R = 1 for a hit at K = 2, F1 = 2PR/(P+R) = 2/3
    assert metrics.f1(ranks, 2).mean() == pytest.approx((2 / 3) * (2 / 3))
    assert metrics.coverage(lists, 2, n_rankable=10) == pytest.approx(6 / 10)  # 3 1 5 4 7 8

    # text vectors: 1 and 3 point the same way, 2 is orthogonal to both
    vec = np.zeros((10, 2), np.float32)
    vec[[1, 3]] = [1.0, 0.0]
    vec[[2, 4, 5, 7, 8, 9]] = [0.0, 1.0]
    div = metrics.diversity(lists, (2, 3), vec)
    assert div[2][0] == pytest.approx(0.0)  # (3, 1): same direction
    assert div[3][0] == pytest.approx(2 / 3)  # pairs (3,1) 0, (3,2) 1, (1,2) 1
    assert div[3][1] == pytest.approx(0.0)  # 5 and 4 (the -1 pad is not an item)
    item_users = np.array([0, 3, 1, 7, 0, 0, 0, 0, 0, 0])
    nov = metrics.novelty(lists, 2, item_users, n_users=7)
    assert nov[0] == pytest.approx((-math.log2(8 / 8) - math.log2(4 / 8)) / 2)  # items 3, 1

    got = metrics.compute(
        lists, targets, (2,), metrics.normalise(vec), item_users, 7, 10,
        {"all": np.ones(3, bool), "firsts": np.array([True, False, False]),
         "none": np.zeros(3, bool)},
    )  # fmt: skip
    assert set(got) == {"all", "firsts"}  # empty slices are left out
    assert got["all"]["hr", 2] == pytest.approx(2 / 3)
    assert got["firsts"]["mrr", 2] == pytest.approx(0.5)
    assert got["firsts"]["coverage", 2] == pytest.approx(2 / 10)


def test_top_k_breaks_ties_by_index_and_pads() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert baselines.top_k(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert baselines.top_k(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    neg = np.array([[-np.inf, 1.0, -np.inf, 0.5]])
    assert baselines.top_k(neg, 3).tolist() == [[1, 3, -1]]


# ---------------------------------------------------------------- a hand-made snapshot

DAY = dt.timedelta(days=1)
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def write_snapshot(
    folder: Path, histories: dict[str, list[tuple[str, int]]], items: list[str], **opts
) -> Path:
    """A snapshot folder: histories are (item, day) pairs; text vectors are one-hot-ish."""
    folder.mkdir(parents=True, exist_ok=True)
    inactive = set(opts.get("inactive", ()))
    pl.DataFrame(
        {
            "item_id": items,
            "title": items,
            "category": ["c"] * len(items),
            "active": [i not in inactive for i in items],
            "item_text": items,
            "text_hash": items,
        }
    ).write_parquet(folder / "items.parquet")
    rows = [(u, i, T0 + d * DAY) for u, h in histories.items() for i, d in h]
    ts = [r[2] for r in rows]
    pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "first_ts": pl.Series(ts, dtype=pl.Datetime("us", "UTC")),
            "last_ts": pl.Series(ts, dtype=pl.Datetime("us", "UTC")),
            "n_events": [1] * len(rows),
            "purchased": [False] * len(rows),
        }
    ).sort(["user_id", "first_ts", "item_id"]).write_parquet(folder / "interactions.parquet")
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(len(items), 8)).astype(np.float32)
    np.save(folder / "text_embeddings.npy", vec / np.linalg.norm(vec, axis=1, keepdims=True))
    (folder / "snapshot.json").write_text(json.dumps({"as_of": "2026-11-01"}))
    return folder


def _split(folder: Path, protocol: str, part: str, cfg: EvalConfig | None = None):
    catalog = train.load_catalog(folder)
    active = np.concatenate([[False], catalog["active"].to_numpy()])
    inter = splits.load_interactions(folder, catalog)
    return splits.make_split(inter, active, protocol, part, cfg), catalog


def _pairs(split: splits.Split, catalog: pl.DataFrame) -> set[tuple[str, str]]:
    ids = ["", *catalog["item_id"].to_list()]
    seqs = split.train
    return {
        (u, ids[seqs.seq[p]])
        for r, u in enumerate(seqs.user_ids)
        for p in range(seqs.starts[r], seqs.ends[r])
    }


def _targets(split: splits.Split, catalog: pl.DataFrame) -> dict[str, str]:
    ids = ["", *catalog["item_id"].to_list()]
    return {u: ids[t] for u, t in zip(split.users, split.target, strict=True)}


SPLIT_HISTORIES = {
    # tie on day 3: b and c; order is (first_ts, item_id), so c is last
    "u1": [("a", 1), ("c", 3), ("b", 3)],
    "u2": [("a", 2), ("d", 5), ("e", 8), ("b", 9)],
    "u3": [("e", 9)],  # one item: a test target and no training (cold user)
    "u4": [("b", 1), ("a", 2)],  # validation target b, no earlier item: cold for validation
}
ITEMS = ["a", "b", "c", "d", "e", "f"]


def test_leave_one_out_holds_out_the_last_items_without_leaking(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "s", SPLIT_HISTORIES, ITEMS)
    test, catalog = _split(snap, "loo", "test")
    val, _ = _split(snap, "loo", "validation")
    assert _targets(test, catalog) == {"u1": "c", "u2": "b", "u3": "e", "u4": "a"}
    assert _targets(val, catalog) == {"u1": "b", "u2": "e", "u4": "b"}
    assert _pairs(test, catalog) == {
        ("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "d"), ("u2", "e"), ("u4", "b")
    }  # fmt: skip
    assert _pairs(val, catalog) == {("u1", "a"), ("u2", "a"), ("u2", "d")}
    for split in (test, val):  # no target in its own training data
        assert not set(_targets(split, catalog).items()) & _pairs(split, catalog)
    # nor a test target in the validation part's training data
    assert not set(_targets(test, catalog).items()) & _pairs(val, catalog)
    cold = {u for u, r in zip(test.users, test.row, strict=True) if r < 0}
    assert cold == {"u3"}
    assert {u for u, r in zip(val.users, val.row, strict=True) if r < 0} == {"u4"}
    assert test.history_lengths().tolist() == [2, 3, 0, 1]
    assert test.train.user_ids == ["u1", "u2", "u4"]


def test_time_split_cuts_once_and_keeps_ties_together(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "s", SPLIT_HISTORIES, ITEMS)
    cfg = EvalConfig(time_test_days=3)  # latest day is 9: test from day 7, validation 4..6
    test, catalog = _split(snap, "time", "test", cfg)
    val, _ = _split(snap, "time", "validation", cfg)
    assert test.cut is not None and val.cut is not None
    assert dt.datetime.fromtimestamp(test.cut / 1e6, dt.UTC) > T0 + 6 * DAY
    assert _targets(test, catalog) == {"u2": "e", "u3": "e"}  # u2's first new item after
    assert _targets(val, catalog) == {"u2": "d"}
    for split in (test, val):
        assert (split.train_t < split.cut).all()
        assert not set(_targets(split, catalog).items()) & _pairs(split, catalog)
    assert ("u2", "b") not in _pairs(test, catalog)  # after the cut, not a target either
    # a share-based cut falls on a timestamp: both day-3 items of u1 land on one side
    share, _ = _split(snap, "time", "test", EvalConfig(time_test_share=0.5))
    both = {("u1", "b"), ("u1", "c")}
    assert both <= _pairs(share, catalog) or not both & _pairs(share, catalog)


def test_inactive_targets_are_left_out_and_counted(tmp_path: Path) -> None:
    snap = write_snapshot(tmp_path / "s", SPLIT_HISTORIES, ITEMS, inactive={"c"})
    test, catalog = _split(snap, "loo", "test")
    assert "u1" not in test.users and test.inactive_targets == 1
    sampled, _ = _split(snap, "loo", "test", EvalConfig(max_users=2))
    assert len(sampled.users) == 2 and sampled.sampled_from == 3


# ---------------------------------------------------------------- baselines


def _planted_histories() -> dict[str, list[tuple[str, int]]]:
    """x -> y: 20 teachers show it in training; 10 students end on x, y held out."""
    rng = np.random.default_rng(3)
    filler = ["f1", "f2", "f3", "f4", "f5"]
    hist: dict[str, list[tuple[str, int]]] = {}
    for u in range(20):
        a, b = rng.choice(filler, size=2, replace=False)
        hist[f"t{u:02d}"] = [(a, 0), ("x", 1), ("y", 2), (b, 3)]
    for u in range(10):
        hist[f"s{u:02d}"] = [(str(rng.choice(filler)), 0), ("x", 1), ("y", 2)]
    return hist


PLANTED_ITEMS = ["f1", "f2", "f3", "f4", "f5", "x", "y", "z"]


def test_baselines_rank_known_answers(tmp_path: Path) -> None:
    hist = _planted_histories()
    hist["q"] = [("f1", 0), ("x", 4)]  # test target x; training [f1]
    snap = write_snapshot(tmp_path / "s", hist, PLANTED_ITEMS, inactive={"z"})
    split, catalog = _split(snap, "loo", "test")
    ids = ["", *catalog["item_id"].to_list()]
    n_index = len(ids)
    active = np.array([False] + [i != "z" for i in ids[1:]])
    bias = np.where(active, 0.0, -np.inf)
    pop = baselines.popularity(split, n_index, window_days=365)
    students = [r for r, u in enumerate(split.users) if u.startswith("s")]

    trans = baselines.Transition(split, pop)
    lists = baselines.rank(trans, split, bias, pop, 3)
    assert {ids[i] for i in lists[students, 0]} == {"y"}  # x -> y, 20 times
    knn = baselines.ItemKNN(split, pop, neighbors=10)
    lists_knn = baselines.rank(knn, split, bias, pop, 8)
    # cosine over co-occurrence: x in 30 training histories, y in 20, together in 20
    x, y = ids.index("x"), ids.index("y")
    assert knn.sim[x, y] == pytest.approx(20 / math.sqrt(30 * 20))
    assert {ids[i] for i in lists_knn[students, 0]} == {"y"}
    for row, user in enumerate(split.users):
        got = [ids[i] for i in lists_knn[row] if i >= 0]
        seen = {ids[i] for i in split.train.seq[_span(split, user)]}
        assert not seen & set(got), "a user's own items are never ranked"
        assert "z" not in got, "inactive items are never ranked"
    popular = baselines.rank(baselines.Popular(pop), split, bias, pop, 2)
    assert [ids[i] for i in popular[split.users.index("q")]] == ["x", "y"]


def test_candidate_is_masked_like_production(tmp_path: Path) -> None:
    hist = _planted_histories()
    hist["q"] = [("f1", 0), ("x", 4)]
    snap = write_snapshot(tmp_path / "s", hist, PLANTED_ITEMS, inactive={"z", "f5"})
    split, catalog = _split(snap, "loo", "test")
    ids = ["", *catalog["item_id"].to_list()]
    active = np.array([False] + [i not in ("z", "f5") for i in ids[1:]])
    bias = np.where(active, 0.0, -np.inf)
    pop = baselines.popularity(split, len(ids), 365)
    cand = evaluate.Candidate.fit(split, embed.load_embeddings(snap), TINY)
    lists = baselines.rank(cand, split, bias, pop, 8)
    assert lists.shape == (len(split.users), 8)
    for row, user in enumerate(split.users):
        got = [ids[i] for i in lists[row] if i >= 0]
        seen = {ids[i] for i in split.train.seq[_span(split, user)]}
        assert len(got) == len(set(got)) == 6 - len(seen - {"f5"})  # every rankable unseen item
        assert not (seen | {"z", "f5", ""}) & set(got)


def _span(split: splits.Split, user: str) -> slice:
    row = split.row[split.users.index(user)]
    return slice(split.train.starts[row], split.train.ends[row])


# ---------------------------------------------------------------- evaluate, store, gate

TINY = TrainConfig(dim=8, max_history=4, epochs=2, batch_size=64, lr=1e-2)


@pytest.fixture
def evaluated(settings: Settings, tmp_path: Path) -> dict:
    snap = write_snapshot(tmp_path / "snap", _planted_histories(), PLANTED_ITEMS)
    summary = evaluate.evaluate(
        settings, snap, "run-1", "v1", TINY, EvalConfig(ks=(1, 10), time_test_days=1)
    )
    return {"snapshot": snap, "summary": summary}


def test_evaluate_writes_rows_once_per_run(settings: Settings, evaluated, caplog) -> None:
    summary = evaluated["summary"]
    assert set(summary) == {"loo", "time"}
    loo = summary["loo"]["test"]
    assert set(loo) == {"nightrec", "popular", "item_knn", "transition"}
    assert loo["transition"]["hr@1"] >= 10 / 30  # the students' y after x
    assert loo["popular"]["users"] == 30
    bounded = ("hr", "ndcg", "mrr", "precision", "f1", "coverage")
    assert all(
        0 <= v <= 1 for m in loo.values() for f, v in m.items() if f[: f.find("@")] in bounded
    )
    rows = eval_store.run_rows(settings, "run-1")
    n = rows.height
    assert n > 0 and rows.filter(pl.col("value").is_null()).height == 0
    assert set(rows["slice"]) >= {"all", "short_history"}
    with caplog.at_level("INFO", logger="nightrec.evaluate"):
        evaluate.evaluate(
            settings,
            evaluated["snapshot"],
            "run-1",
            "v1",
            TINY,
            EvalConfig(protocols=("loo",), ks=(1, 10)),
        )
    again = eval_store.run_rows(settings, "run-1")
    assert again.height < n and set(again["protocol"]) == {"loo"}  # replaced, not added
    assert any(r.getMessage().startswith("evaluate loo test") for r in caplog.records)
    doc = json.loads((eval_store.reports_dir(settings, "run-1") / "evaluation.json").read_text())
    assert doc["splits"]["loo/test"]["users"] == 30
    live = eval_store.live_summary(settings, "v1")
    assert live is not None and set(live["loo"]["test"]) == {"nightrec"}
    assert live["loo"]["test"]["nightrec"]["hr@1"] == pytest.approx(loo["nightrec"]["hr@1"])
    assert eval_store.live_summary(settings, "v-unknown") is None
    assert eval_store.live_summary(settings) is None  # nothing promoted


def test_a_version_evaluated_before_is_not_fitted_again(settings: Settings, evaluated, caplog):
    """Same version id (snapshot + config + encoder) and same evaluation config: the figures
    are copied to the new run; a different evaluation config evaluates anew."""
    cfg = EvalConfig(ks=(1, 10), time_test_days=1)
    with caplog.at_level("INFO", logger="nightrec.evaluate"):
        again = evaluate.evaluate(settings, evaluated["snapshot"], "run-2", "v1", TINY, cfg)
    assert again == evaluated["summary"]
    assert any("figures reused" in r.getMessage() for r in caplog.records)
    first, second = (eval_store.run_rows(settings, r).drop("run_id") for r in ("run-1", "run-2"))
    assert first.equals(second)
    caplog.clear()
    with caplog.at_level("INFO", logger="nightrec.evaluate"):
        evaluate.evaluate(settings, evaluated["snapshot"], "run-3", "v1", TINY, EvalConfig())
    assert not any("figures reused" in r.getMessage() for r in caplog.records)


def test_parts_in_worker_processes_give_the_same_figures(
    settings: Settings, evaluated, monkeypatch, caplog
) -> None:
    """The four parts fitted side by side in spawned processes (one torch thread each, as
    here) write the same figures as in this process, and their log lines reach this one."""
    monkeypatch.setattr(evaluate, "PARALLEL_EVENTS", 0)
    monkeypatch.setenv("NIGHTREC_WORKERS", "2")
    monkeypatch.setattr("nightrec.workers.cpus", lambda: 2)  # one thread in each of two
    cfg = EvalConfig(ks=(1, 10), time_test_days=1)
    with caplog.at_level("INFO", logger="nightrec"):
        evaluate.evaluate(settings, evaluated["snapshot"], "run-p", None, TINY, cfg)
    doc = json.loads((eval_store.reports_dir(settings, "run-p") / "evaluation.json").read_text())
    assert doc["processes"] == 2
    key = ["protocol", "split", "model", "metric", "k", "slice"]
    here = eval_store.run_rows(settings, "run-1").sort(key)
    there = eval_store.run_rows(settings, "run-p").sort(key)
    assert there.select(key).equals(here.select(key))
    assert np.allclose(there["value"].to_numpy(), here["value"].to_numpy(), atol=1e-9)
    workers_lines = [r.getMessage() for r in caplog.records if r.processName != "MainProcess"]
    assert any("train: kept epoch" in m for m in workers_lines)  # a fit's log, from a worker


def test_parts_with_the_same_training_data_share_one_fit(
    settings: Settings, tmp_path: Path, caplog, monkeypatch
) -> None:
    """Every user's last item on the same last day: the time split's test part trains on
    exactly the loo test part's data, so it ranks with that fit, and its figures are those
    of a fit of its own (training is deterministic)."""
    fits: list[int] = []  # the real fit, counted (a tiny fit can take under a millisecond)
    real_fit = evaluate.Candidate.fit.__func__
    monkeypatch.setattr(
        evaluate.Candidate,
        "fit",
        classmethod(lambda cls, *a, **k: fits.append(1) or real_fit(cls, *a, **k)),
    )
    hist = {
        u: [(item, 10 - (len(h) - 1 - k)) for k, (item, _) in enumerate(h)]
        for u, h in _planted_histories().items()
    }
    snap = write_snapshot(tmp_path / "same", hist, PLANTED_ITEMS)
    cfg = EvalConfig(ks=(1, 10), time_test_days=1)
    with caplog.at_level("INFO", logger="nightrec.evaluate"):
        evaluate.evaluate(settings, snap, "run-s", None, TINY, cfg)
    doc = json.loads((eval_store.reports_dir(settings, "run-s") / "evaluation.json").read_text())
    shared = doc["splits"]["time/test"]
    assert shared["fit_shared_with"] == "loo/test" and shared["seconds"]["fit"] == 0.0
    assert "fit_shared_with" not in doc["splits"]["loo/test"]
    assert "fit" in doc["splits"]["loo/test"]["seconds"]
    # one real fit for each part that shares no other part's training data (time/test
    # shares loo/test's), and none more
    fitted = [k for k, v in doc["splits"].items() if "fit_shared_with" not in v]
    assert len(fits) == len(fitted) and "time/test" not in fitted
    assert shared["train_examples"] == doc["splits"]["loo/test"]["train_examples"]
    assert any("ranks with the model fitted for loo/test" in r.getMessage() for r in caplog.records)

    split, catalog = _split(snap, "time", "test", cfg)
    active = np.concatenate([[False], catalog["active"].to_numpy()])
    before = len(fits)
    own, counts = evaluate.evaluate_split(split, embed.load_embeddings(snap), active, TINY, cfg)
    assert len(fits) == before + 1 and "fit" in counts["seconds"]  # fitted for this part alone
    key = ["metric", "k", "slice"]
    mine = pl.DataFrame(own).filter(pl.col("model") == "nightrec").sort(key)
    stored = (
        eval_store.run_rows(settings, "run-s")
        .filter(
            (pl.col("protocol") == "time")
            & (pl.col("split") == "test")
            & (pl.col("model") == "nightrec")
        )
        .sort(key)
    )
    mine = mine.filter(pl.col("value").is_not_nan())
    assert stored.select(key).equals(mine.select(key))
    assert np.allclose(stored["value"].to_numpy(), mine["value"].to_numpy(), atol=1e-9)


def test_workers_knob_is_checked(monkeypatch) -> None:
    from nightrec import workers

    monkeypatch.setenv("NIGHTREC_WORKERS", "0")
    with pytest.raises(ContractError, match="NIGHTREC_WORKERS must be >= 1"):
        workers.available(4)
    monkeypatch.setenv("NIGHTREC_WORKERS", "two")
    with pytest.raises(ContractError, match="whole number"):
        workers.available(4)
    monkeypatch.setenv("NIGHTREC_WORKERS", "3")
    assert workers.available(4) == 3 and workers.available(2) == 2 and workers.available(1) == 1


def _summary(**figures: float) -> eval_store.Summary:
    return {"loo": {"validation": {m: {"ndcg@10": v} for m, v in figures.items()}}}


def test_gate_refuses_worse_models_and_passes_better_ones() -> None:
    better = _summary(nightrec=0.10, popular=0.05, item_knn=0.08, transition=0.09)
    ok, why = evaluate.gate(better, None)
    assert ok and "0.1000" in why
    ok, why = evaluate.gate(_summary(nightrec=0.07, popular=0.05, item_knn=0.08), None)
    assert not ok and "item_knn" in why
    live = _summary(nightrec=0.12)
    ok, why = evaluate.gate(better, live, tolerance=0.1)
    assert not ok and "live" in why  # 0.10 < 0.12 * 0.9
    assert evaluate.gate(better, live, tolerance=0.2)[0]  # within 20 %
    assert evaluate.gate(better, _summary(nightrec=0.09))[0]
    assert not evaluate.gate({}, None)[0]
    assert not evaluate.gate(better, None, metric="hr@10")[0]  # no such figure: refuse


def test_eval_config_refuses_bad_values() -> None:
    with pytest.raises(ContractError):
        EvalConfig(protocols=("random",))
    with pytest.raises(ContractError):
        EvalConfig(gate_metric="ndcg@5")  # 5 not among ks
    with pytest.raises(ContractError):
        EvalConfig(time_test_share=0.0)


# ---------------------------------------------------------------- report


def test_report_is_self_contained_and_escapes_data(settings: Settings, evaluated) -> None:
    rows = eval_store.run_rows(settings, "run-1")
    hostile = rows.head(1).with_columns(pl.lit("<script>alert(1)</script>").alias("model"))
    eval_store.write_rows(settings, "run-1", pl.concat([rows, hostile]))
    path = report.write_report(settings, "run-1")
    html = path.read_text()
    assert path == eval_store.reports_dir(settings, "run-1") / "report.html"
    assert (settings.home / "reports" / "latest.html").read_text() == html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "nightrec" in html and "item_knn" in html and "short_history" in html
