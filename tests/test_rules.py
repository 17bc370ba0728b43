"""Business rules: each rule removes exactly what it should, over the full history.

Known answers come from today's scorer itself: a rule's lists must equal today's longer
lists with exactly the rule's items taken out (or, for consumables, put back).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import AS_OF, write_csv
from test_scoring import TOP_N, isolated, run1  # noqa: F401  (the fixture)

from nightrec import publish, registry, rules, score
from nightrec.config import ContractError, ScoreConfig, Settings
from nightrec.rules import RulesConfig
from nightrec.snapshot import cutoff_of

RULES_SCHEMA = {"kind": pl.Utf8, "user_id": pl.Utf8, "item_id": pl.Utf8, "category": pl.Utf8}
KEY = ["user_id", "rank", "item_id"]


def _snapshot(run1, tmp_path: Path, rows: list[tuple], extra: pl.DataFrame | None = None) -> Path:  # noqa: F811
    """run1's snapshot with rule lists ``rows`` (kind, user_id, item_id, category) and
    extra interactions appended."""
    snap = tmp_path / "snap"
    shutil.copytree(run1["snapshot"], snap)
    pl.DataFrame(rows, schema=RULES_SCHEMA, orient="row").write_parquet(snap / rules.FILE)
    if extra is not None:
        inter = pl.read_parquet(snap / "interactions.parquet")
        both = pl.concat([inter, extra.select(inter.columns).cast(inter.schema)])
        both.sort("user_id", "first_ts", "item_id").write_parquet(snap / "interactions.parquet")
    return snap


def _score(run1, tmp_path, snap, name, top_n=TOP_N, rule_cfg=None) -> pl.DataFrame:  # noqa: F811
    settings = isolated(run1, tmp_path / name)
    cfg = ScoreConfig(top_n=top_n, provider="cpu", similar_k=0)
    score.score(settings, snap, name, cfg, None, None, rule_cfg)
    folder = score.shard_dir(settings, name, 0, 1)
    lists = pl.read_parquet(sorted(folder.glob("part-*.parquet"))).sort("user_id", "rank")
    return lists.drop(score.RUN_COLUMNS)  # the run's own id differs between the runs compared


def _counts(run1, tmp_path, snap, name, rule_cfg) -> dict:  # noqa: F811
    settings = isolated(run1, tmp_path / name)
    stats = score.score(
        settings, snap, name, ScoreConfig(top_n=TOP_N, provider="cpu"), None, None, rule_cfg
    )
    return stats["rules"]


def _without(lists: pl.DataFrame, gone: pl.DataFrame, n: int = TOP_N) -> pl.DataFrame:
    """``lists`` less the (user, item) pairs (or items, with only item_id) of ``gone``,
    re-ranked and cut to ``n``: the known answer of a rule that removes ``gone``."""
    on = [c for c in ("user_id", "item_id") if c in gone.columns]
    return (
        lists.join(gone, on=on, how="anti", maintain_order="left")
        .sort("user_id", "rank")
        .with_columns(pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int32).alias("rank"))
        .filter(pl.col("rank") <= n)
    )


def _users(run1) -> int:  # noqa: F811
    snap = run1["snapshot"]
    users = pl.read_parquet(snap / "users.parquet")["user_id"]
    inter = pl.read_parquet(snap / "interactions.parquet", columns=["user_id"])["user_id"]
    return pl.concat([users, inter]).n_unique()


# ---------------------------------------------------------------- defaults


def test_defaults_reproduce_todays_lists_exactly(run1, tmp_path: Path) -> None:  # noqa: F811
    today = _score(run1, tmp_path, run1["snapshot"], "today")
    active = sorted(run1["active"])
    listed = [
        ("exclude_items", None, active[0], None),
        ("exclude_user_items", today["user_id"][0], today["item_id"][0], None),
        ("include_items", None, active[1], None),
        ("consumables", None, None, "no such category"),
    ]
    snap = _snapshot(run1, tmp_path, listed)
    assert not RulesConfig().active
    loaded_but_off = _score(run1, tmp_path, snap, "off", rule_cfg=RulesConfig())
    assert loaded_but_off.equals(today)
    # every rule on, over lists that remove nothing: the rules' path, and today's lists
    idle = [
        ("exclude_items", None, sorted(run1["inactive"])[0], None),  # inactive anyway
        ("consumables", None, None, "no such category"),
    ]
    seen = run1["seen"].row(0)
    idle.append(("exclude_user_items", seen[0], seen[1], None))  # already seen
    snap = _snapshot(run1, tmp_path / "idle", idle)
    on = RulesConfig(exclude_items=True, exclude_user_items=True, consumable_days=1)
    assert _score(run1, tmp_path, snap, "idle", rule_cfg=on).equals(today)
    assert _counts(run1, tmp_path, snap, "idle_n", on) == {
        "consumables_readmitted": 0,
        "exclude_user_items_removed": 0,
        "exclude_items_removed": 0,
    }


# ---------------------------------------------------------------- each rule


def test_global_exclusion_removes_exactly_the_listed_items(run1, tmp_path: Path) -> None:  # noqa: F811
    longer = _score(run1, tmp_path, run1["snapshot"], "longer", top_n=TOP_N + 2)
    top = longer.filter(pl.col("rank") == 1)["item_id"].value_counts(sort=True)["item_id"]
    gone = pl.DataFrame({"item_id": top.head(2)})  # the two items most often ranked first
    snap = _snapshot(run1, tmp_path, [("exclude_items", None, i, None) for i in gone["item_id"]])
    cfg = RulesConfig(exclude_items=True)
    got = _score(run1, tmp_path, snap, "excluded", rule_cfg=cfg)
    want = _without(longer, gone)
    assert got.select(KEY).equals(want.select(KEY))  # cold users' popular lists included
    assert set(got.filter(pl.col("reason") == "popular")["user_id"])  # ... which exist
    # counted: every user but those who saw the item had it eligible
    saw = run1["seen"].join(gone, on="item_id", how="semi").height
    settings = isolated(run1, tmp_path / "pub")
    stats = score.score(
        settings, snap, "pub", ScoreConfig(top_n=TOP_N, provider="cpu"), rule_cfg=cfg
    )
    assert stats["rules"] == {"exclude_items_removed": _users(run1) * 2 - saw}
    publish.publish(settings, "pub", AS_OF)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        recorded = con.execute(
            "select metric, value from run_metrics where run_id = 'pub' and step = 'rules'"
        ).fetchall()
    assert recorded == [("exclude_items_removed", _users(run1) * 2 - saw)]
    # idempotent: the same run again gives the same lists
    assert _score(run1, tmp_path, snap, "excluded", rule_cfg=cfg).equals(got)


def test_user_exclusions_remove_only_that_users_pairs(run1, tmp_path: Path) -> None:  # noqa: F811
    longer = _score(run1, tmp_path, run1["snapshot"], "longer", top_n=TOP_N + 2)
    warm = longer.filter(pl.col("reason") != "popular")
    cold = longer.filter(pl.col("reason") == "popular")
    a = warm["user_id"][0]
    b = warm.filter(pl.col("user_id") != a)["user_id"][0]
    c = cold["user_id"][0]
    a_list = warm.filter(pl.col("user_id") == a)["item_id"]
    b_seen = run1["seen"].filter(pl.col("user_id") == b)["item_id"][0]
    pairs = [(a, a_list[0]), (a, a_list[2]), (b, b_seen), (c, cold["item_id"][0])]
    snap = _snapshot(run1, tmp_path, [("exclude_user_items", u, i, None) for u, i in pairs])
    cfg = RulesConfig(exclude_user_items=True)
    got = _score(run1, tmp_path, snap, "user", rule_cfg=cfg)
    gone = pl.DataFrame(pairs, schema=["user_id", "item_id"], orient="row")
    assert got.select(KEY).equals(_without(longer, gone).select(KEY))
    assert _counts(run1, tmp_path, snap, "user_n", cfg) == {"exclude_user_items_removed": 3}


def test_inclusion_lists_global_and_per_user(run1, tmp_path: Path) -> None:  # noqa: F811
    n_active = len(run1["active"])
    full = _score(run1, tmp_path, run1["snapshot"], "full", top_n=n_active)  # every eligible item
    active = sorted(run1["active"])
    allowed = active[::3]  # the global list: a third of the catalog
    warm = full.filter(pl.col("reason") != "popular")
    lengths = run1["seen"].join(warm, on="user_id", how="semi").group_by("user_id").len()
    a = lengths.sort("len", "user_id")["user_id"][0]  # a short history: much left to include
    cold_user = full.filter(pl.col("reason") == "popular")["user_id"][0]
    a_seen = run1["seen"].filter(pl.col("user_id") == a)["item_id"].to_list()
    # a's own list: two allowed items it has not seen, one it saw, one off the global list
    a_unseen = [i for i in allowed if i not in a_seen]
    own_a = [a_unseen[0], a_unseen[3], *[i for i in a_seen if i in allowed][:1], active[1]]
    own_cold = [allowed[2], allowed[5]]
    listed = [("include_items", None, i, None) for i in allowed]
    listed += [("include_items", a, i, None) for i in own_a]
    listed += [("include_items", cold_user, i, None) for i in own_cold]
    snap = _snapshot(run1, tmp_path, listed)
    cfg = RulesConfig(include_items=True)
    got = _score(run1, tmp_path, snap, "include", rule_cfg=cfg)
    keep = full.filter(pl.col("item_id").is_in(allowed))
    keep = keep.filter(
        (pl.col("user_id") != a) | pl.col("item_id").is_in(own_a),
        (pl.col("user_id") != cold_user) | pl.col("item_id").is_in(own_cold),
    )
    want = _without(keep, pl.DataFrame(schema={"user_id": pl.Utf8, "item_id": pl.Utf8}))
    assert got.select(KEY).equals(want.select(KEY))
    assert got.filter(pl.col("user_id") == a)["item_id"].to_list() == [
        i for i in full.filter(pl.col("user_id") == a)["item_id"] if i in {own_a[0], own_a[1]}
    ]
    assert _counts(run1, tmp_path, snap, "include_n", cfg) == {
        "include_items_removed": full.height - _without(keep, keep.clear(), n_active).height
    }


def test_consumables_come_back_after_n_days_over_the_full_history(run1, tmp_path: Path) -> None:  # noqa: F811
    """A long history: what it bought far before the model's last max_history items
    still counts (a non-consumable and a hidden item stay out, an old consumable is back)."""
    manifest = registry.load_version(run1["settings"].models_dir)[1]
    max_history = int(manifest["config"]["max_history"])
    items = pl.read_parquet(run1["snapshot"] / "items.parquet").filter("active")
    cat = items["category"].drop_nulls().mode().sort()[0]  # the consumable category
    in_cat = items.filter(pl.col("category") == cat)["item_id"].sort().to_list()
    others = items.filter(pl.col("category") != cat)["item_id"].sort().to_list()
    old_c, by_id, old_n, hidden = in_cat[0], others[0], others[1], others[2]
    recent_c = in_cat[1]
    views = others[3 : 3 + max_history + 5]
    cutoff = cutoff_of(AS_OF)
    user = "zz_long_history"

    def row(item, days_before, purchase):
        ts = cutoff - dt.timedelta(days=days_before)
        return (user, item, ts, ts, 1, purchase, ts if purchase else None, 4 if purchase else 1)

    extra = [row(old_c, 60, True), row(by_id, 59, True), row(old_n, 58, True)]
    extra += [row(hidden, 57, False), row(recent_c, 20, True)]
    extra += [row(i, 15 - n * 0.1, False) for n, i in enumerate(views)]
    cols = ["user_id", "item_id", "first_ts", "last_ts", "n_events", "purchased"]
    frame = pl.DataFrame(extra, schema=[*cols, "last_purchase_ts", "first_strength"], orient="row")
    listed = [("consumables", None, None, cat), ("consumables", None, by_id, None)]
    listed.append(("exclude_user_items", user, hidden, None))
    snap = _snapshot(run1, tmp_path, listed, frame)
    n_active = len(run1["active"])
    full = _score(run1, tmp_path, snap, "full", top_n=n_active)
    cfg = RulesConfig(consumable_days=30, exclude_user_items=True)
    got = _score(run1, tmp_path, snap, "consumables", top_n=n_active, rule_cfg=cfg)
    mine = got.filter(pl.col("user_id") == user)["item_id"].to_list()
    assert old_c in mine and by_id in mine  # bought 60 / 59 days ago, consumable: back
    assert recent_c not in mine  # bought 20 days ago: not yet
    assert old_n not in mine and hidden not in mine  # not consumable / hidden: still out
    # everyone: the lists with the readmitted pairs taken out again are today's lists
    inter = pl.read_parquet(snap / "interactions.parquet")
    consumable = items.filter((pl.col("category") == cat) | (pl.col("item_id") == by_id))
    back = inter.filter(
        pl.col("purchased"), pl.col("last_purchase_ts") < cutoff - dt.timedelta(days=30)
    ).join(consumable, on="item_id", how="semi")
    assert back.filter(pl.col("user_id") == user).height == 2
    assert got.join(back, on=["user_id", "item_id"], how="semi").height == back.height
    assert (
        _without(got, back.select("user_id", "item_id"), n_active)
        .select(KEY)
        .equals(full.select(KEY))
    )
    assert _counts(run1, tmp_path, snap, "consumables_n", cfg) == {
        "consumables_readmitted": back.height,
        "exclude_user_items_removed": 0,  # the hidden item was seen: out already
    }


def test_rules_need_a_snapshot_that_has_them(run1, tmp_path: Path) -> None:  # noqa: F811
    snap = _snapshot(run1, tmp_path, [])
    (snap / rules.FILE).unlink()
    with pytest.raises(ContractError, match="rules.parquet"):
        _score(run1, tmp_path, snap, "old", rule_cfg=RulesConfig(exclude_items=True))
    with pytest.raises(ContractError, match="consumable_days"):
        RulesConfig(consumable_days=-1)


# ---------------------------------------------------------------- loading


def test_load_rejects_bad_rows_naming_record_and_field(settings: Settings, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "hidden.csv",
        "user_id,item_id,reason",
        ["u1,i1,hidden", "u1,i1,again", ",i2,bought", "u2,,hidden", "u3,i3"],
    )
    out = rules.load(settings, "exclude_user_items", path)
    assert out == {
        "kind": "exclude_user_items",
        "file": str(path),
        "rows": 5,
        "loaded": 2,
        "rejected": 2,
        "duplicate": 1,
    }
    assert rules.load(settings, "exclude_user_items", path) == out  # again: nothing changes
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        lists = con.execute(
            "select kind, user_id, item_id, reason, row_number from rule_lists order by 5"
        ).fetchall()
        bad = con.execute(
            "select kind, source_file, row_number, field, reason from rejected_rows order by 3"
        ).fetchall()
    assert lists == [
        ("exclude_user_items", "u1", "i1", "hidden", 1),
        ("exclude_user_items", "u3", "i3", None, 5),
    ]
    assert bad == [
        ("rules_exclude_user_items", str(path), 3, "user_id", "is empty"),
        ("rules_exclude_user_items", str(path), 4, "item_id", "is empty"),
    ]
    # a new file replaces the list of its kind, and only that kind
    cons = write_csv(tmp_path / "c.csv", "category,item_id", ["soap,", ",i9", "soap,i8"])
    assert rules.load(settings, "consumables", cons)["rejected"] == 1
    write_csv(path, "user_id,item_id", ["u9,i9"])
    rules.load(settings, "exclude_user_items", path)
    shown = {r["kind"]: r["rows"] for r in rules.show(settings)}
    assert shown == {"consumables": 2, "exclude_user_items": 1}


def test_load_refuses_a_bad_header_or_kind(settings: Settings, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", "item,reason", ["i1,x"])
    with pytest.raises(ContractError, match=r"x.csv.*lacks column\(s\) \['item_id'\].*unknown"):
        rules.load(settings, "exclude_items", path)
    with pytest.raises(ContractError, match="rule kind"):
        rules.load(settings, "exclude_everything", path)
    path = write_csv(tmp_path / "u.csv", "user_id,item_id", ["u1,i1"])
    with pytest.raises(ContractError, match="global exclusion list takes no user_id|unknown"):
        rules.load(settings, "exclude_items", path)


def test_cli_loads_and_shows_rule_lists(settings: Settings, tmp_path: Path, capsys) -> None:
    from nightrec import cli

    path = write_csv(tmp_path / "recall.csv", "item_id,reason", ["i1,recall", "i2,recall"])
    home = ["--home", str(settings.home), "--models-dir", str(settings.models_dir), "-q"]
    assert cli.main([*home, "rules", "load", "--kind", "exclude_items", str(path)]) == 0
    assert cli.main([*home, "rules", "show"]) == 0
    assert '"rows": 2' in capsys.readouterr().out
    assert cli.main([*home, "rules", "load", "--kind", "exclude_items", str(tmp_path / "no")]) == 2


# ---------------------------------------------------------------- evaluation


def test_evaluation_measures_the_lists_the_rules_leave(run1, tmp_path: Path) -> None:  # noqa: F811
    import numpy as np

    from nightrec import baselines, evaluate, splits, train
    from nightrec.config import EvalConfig, TrainConfig
    from nightrec.embed import load_embeddings

    base = run1["snapshot"]
    catalog = train.load_catalog(base)
    text = load_embeddings(base)
    active = np.concatenate([[False], catalog["active"].to_numpy().astype(bool)])
    split = splits.make_split(splits.load_interactions(base, catalog), active, "loo", "test")
    cfg = TrainConfig(dim=16, epochs=2, seed=1)
    cand = evaluate.Candidate.fit(split, text, cfg)
    ids = catalog["item_id"].to_list()  # model index i is ids[i - 1]
    warm = np.flatnonzero(split.row >= 0)
    user = [split.train.user_ids[split.row[w]] for w in warm]
    target = split.target[warm]
    gone = sorted({int(t) for t in target[:3]})  # the first three users' targets, for everyone
    mine = int(target[3])  # user 3's own exclusion: its target
    listed = [i for i in range(1, len(ids) + 1) if active[i] and i != target[4]][:2]
    snap = _snapshot(
        run1,
        tmp_path,
        [("exclude_items", None, ids[i - 1], None) for i in gone]
        + [("exclude_user_items", user[3], ids[mine - 1], None)]
        + [("include_items", user[4], ids[i - 1], None) for i in listed],
    )
    on = RulesConfig(exclude_items=True, exclude_user_items=True, include_items=True)
    removals = rules.removals(snap, pl.Series(split.train.user_ids), on)
    ruled = evaluate.Ruled(cand, split, removals, catalog)
    bias = np.where(active, 0.0, -np.inf).astype(np.float32)
    pop = baselines.popularity(split, len(active), 30)
    k = 10
    plain = baselines.rank(cand, split, bias, pop, k + len(gone) + 1)
    got = baselines.rank(ruled, split, bias, pop, k)
    for n, w in enumerate(warm):  # known answer: today's longer list less what a rule removes
        out = set(gone) | ({mine} if n == 3 else set())
        want = [i for i in plain[w] if i >= 0 and i not in out][:k]
        if n == 4:  # only its inclusion list, less its history
            seen = set(
                split.train.seq[
                    split.train.starts[split.row[w]] : split.train.ends[split.row[w]]
                ].tolist()
            )
            want = [i for i in listed if i not in seen and i not in out]
        assert [i for i in got[w] if i >= 0] == want, n

    def figures(removed) -> dict:
        rows, _ = evaluate.evaluate_split(
            split, text, active, cfg, EvalConfig(), cand, None, catalog, removed
        )
        return {(r["model"], r["metric"], r["k"], r["slice"]): r["value"] for r in rows}

    plain_figures, ruled_figures = figures(None), figures(removals)
    hit = (evaluate.CANDIDATE, "hr", 100, "all")
    assert ruled_figures[hit] < plain_figures[hit]  # three targets can no longer be hit
    for key, value in plain_figures.items():  # the baselines are not ruled
        if key[0] != evaluate.CANDIDATE:
            assert ruled_figures[key] == value
    # nothing loaded under the rules that are on: the same figures as without rules
    idle = rules.removals(
        _snapshot(run1, tmp_path / "idle", []), pl.Series(split.train.user_ids), on
    )
    assert figures(idle) == plain_figures
