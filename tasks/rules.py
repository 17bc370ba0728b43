"""Business rules as SQL over the full history and the catalog, applied when scoring.

Rule lists are warehouse rows (``rule_lists``), loaded from CSV files by ``nightrec
rules load --kind KIND FILE.csv`` (a load replaces the list of its kind; bad rows go to
``rejected_rows`` naming the record and field). The snapshot copies them into
``rules.parquet``; the score step applies the rules its ``RulesConfig`` turns on, in this
order, each over what the previous ones left:

- **consumables** (``consumable_days`` > 0): a purchased item listed as consumable (by
  ``item_id`` or ``category``) whose last purchase is at least that many days before the
  snapshot's cut-off leaves the user's exclude set: it may be recommended again.
- **exclude_user_items**: listed (user, item) pairs join the user's exclude set (items
  bought elsewhere, items hidden).
- **exclude_items**: listed items are never recommended (folded into ``item_bias``).
- **include_items**: a global list (rows without ``user_id``) leaves only its items for
  everyone (``item_bias``); a user's own list leaves that user only its items (the
  exclude set becomes the rest of the catalog: exact, and bounded like any wide history).

The exclude sets are computed by ``sql/rules_user_exclude.sql`` over every interaction of
the snapshot, not the model's last ``max_history`` events. With the defaults
(``RulesConfig()``) nothing is read and the lists are today's. Counts: (user, item) pairs
of the shard's users and the snapshot's active items each rule removed (consumables: put
back), each over what the rules before it left.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from nightrec import db
from nightrec.config import ContractError, IngestConfig, Settings, check_int

log = logging.getLogger(__name__)

KINDS = ("exclude_items", "exclude_user_items", "include_items", "consumables")
COLUMNS = {  # kind -> (required, optional) columns of its CSV file
    "exclude_items": ({"item_id"}, {"reason"}),
    "exclude_user_items": ({"user_id", "item_id"}, {"reason"}),
    "include_items": ({"item_id"}, {"user_id", "reason"}),
    "consumables": (set(), {"item_id", "category", "reason"}),
}
FILE = "rules.parquet"
COUNTS = (  # what each rule's count means, in order of application
    ("consumables", "consumables_readmitted"),
    ("exclude_user_items", "exclude_user_items_removed"),
    ("exclude_items", "exclude_items_removed"),
    ("include_items", "include_items_removed"),
)


@dataclass(frozen=True)
class RulesConfig:
    exclude_items: bool = False  # the global exclusion list
    exclude_user_items: bool = False  # per-user exclusions (bought, hidden)
    include_items: bool = False  # inclusion lists: global, and per user
    consumable_days: int = 0  # consumables again this many days after the last purchase; 0: off

    def __post_init__(self) -> None:
        for name in ("exclude_items", "exclude_user_items", "include_items"):
            if not isinstance(getattr(self, name), bool):
                raise ContractError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_int("consumable_days", self.consumable_days, 0, 36_500)

    @property
    def active(self) -> bool:
        """Whether any rule is on (else scoring reads no rules: today's lists)."""
        return (
            self.exclude_items
            or self.exclude_user_items
            or self.include_items
            or self.consumable_days > 0
        )

    @property
    def removes_items(self) -> bool:
        """Whether a rule that takes items out of lists is on (consumables only put back)."""
        return self.exclude_items or self.exclude_user_items or self.include_items

    def applied(self) -> list[str]:
        """The rules that are on, in order of application."""
        on = {
            "consumables": self.consumable_days > 0,
            "exclude_user_items": self.exclude_user_items,
            "exclude_items": self.exclude_items,
            "include_items": self.include_items,
        }
        return [rule for rule, _ in COUNTS if on[rule]]


# ---------------------------------------------------------------- loading


def load(settings: Settings, kind: str, path: Path, cfg: IngestConfig | None = None) -> dict:
    """Replace rule list ``kind`` with the rows of CSV file ``path``; returns counts.

    Rows that break the list's contract go to ``rejected_rows`` (kind ``rules_<kind>``)
    with the record number, field and reason; a repeated entry is loaded once. Loading
    the same file again changes nothing. ``cfg``: the id length bound (``IngestConfig``).
    """
    started = time.perf_counter()
    cfg = cfg or IngestConfig()
    if kind not in KINDS:
        raise ContractError(f"rule kind {kind!r} is not one of {', '.join(KINDS)}")
    path = Path(path).resolve()
    if not path.is_file():
        raise ContractError(f"rule file {path} does not exist")
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    now = dt.datetime.now(dt.UTC)
    with db.connect(settings.warehouse) as con:
        try:
            db.run(con, "rules_read", {"path": str(path)})
        except duckdb.Error as exc:
            raise ContractError(f"rule file {path} cannot be read as CSV: {exc}") from exc
        header = [r[0] for r in con.execute("describe rule_file").fetchall()]
        _check_header(path, kind, [c for c in header if c != "_row"])
        db.run(con, "rules_stage")
        con.execute(
            "create or replace temp table rule_failed as " + db.sql("check_rules"),
            {"kind": kind, "max_id": cfg.max_id_length},
        )
        total = db.one(con, "select count(*) from rule_staging")[0]
        rejected = db.one(con, "select count(*) from rule_failed")[0]
        con.execute("begin")
        con.execute("delete from rule_lists where kind = $kind", {"kind": kind})
        con.execute(
            "delete from rejected_rows where kind = $kind and checksum = $checksum",
            {"kind": f"rules_{kind}", "checksum": checksum},
        )
        params = {"kind": kind, "source_file": str(path), "now": now}
        db.run(con, "rules_insert", params)
        db.run(con, "rules_reject", {**params, "kind": f"rules_{kind}", "checksum": checksum})
        con.execute("commit")
        loaded = db.one(con, "select count(*) from rule_lists where kind = $k", {"k": kind})[0]
    out = {
        "kind": kind,
        "file": str(path),
        "rows": total,
        "loaded": loaded,
        "rejected": rejected,
        "duplicate": total - rejected - loaded,
    }
    log.info(
        "rules load %s: %d rows of %s -> %d loaded, %d rejected, %d duplicate in %.1fs",
        kind,
        total,
        path.name,
        loaded,
        rejected,
        out["duplicate"],
        time.perf_counter() - started,
    )
    return out


def show(settings: Settings) -> list[dict]:
    """Each loaded rule list: kind, rows, users, source file, load time."""
    with db.connect(settings.warehouse) as con:
        return db.frame(con, "rules_show").to_dicts()


def _check_header(path: Path, kind: str, columns: list[str]) -> None:
    """The file's header must hold the list's required columns and nothing unknown."""
    required, optional = COLUMNS[kind]
    given = set(columns)
    missing = sorted(required - given)
    if kind == "consumables" and not given & {"item_id", "category"}:
        missing = ["item_id or category"]
    unknown = sorted(given - required - optional)
    if missing or unknown:
        problems = [f"lacks column(s) {missing}"] if missing else []
        problems += [f"has unknown column(s) {unknown}"] if unknown else []
        raise ContractError(
            f"rule file {path} ({kind}): header {' and '.join(problems)}; expected "
            f"{sorted(required)}{' and optionally ' + str(sorted(optional)) if optional else ''}"
        )


# ---------------------------------------------------------------- applying


@dataclass
class Applied:
    """What the rules leave for the users of one shard (item ids, not model indices)."""

    removed: pl.DataFrame  # item_id, rule: active items no user gets
    exclude: pl.DataFrame  # user_id, item_id: each user's exclude set
    include: pl.DataFrame  # user_id, item_id: users with an inclusion list, and their lists
    counts: dict[str, int]  # COUNTS metric -> (user, item) pairs, for the rules that are on


def apply(snapshot_dir: Path, users: pl.Series, cfg: RulesConfig, cutoff: dt.datetime) -> Applied:
    """Run the rule SQL over the snapshot's full history and catalog for ``users``."""
    path = snapshot_dir / FILE
    if not path.is_file():
        raise ContractError(
            f"{snapshot_dir} has no {FILE} (cut before business rules): run `nightrec snapshot`"
        )
    inter = snapshot_dir / "interactions.parquet"
    if "last_purchase_ts" not in pl.read_parquet_schema(inter):
        raise ContractError(f"{inter} lacks last_purchase_ts: run `nightrec snapshot` again")
    files = {"items": str(snapshot_dir / "items.parquet"), "rules": str(path)}
    switches = {
        "exclude_items": cfg.exclude_items,
        "include_items": cfg.include_items,
    }
    with duckdb.connect() as con:
        con.execute("set TimeZone = 'UTC'")
        con.register("rule_users", pl.DataFrame({"user_id": users}).to_arrow())
        removed = db.frame(con, "rules_global", {**files, **switches})
        pairs = db.frame(
            con,
            "rules_user_exclude",
            {
                **files,
                "interactions": str(inter),
                "cutoff": cutoff,
                "consumable_days": cfg.consumable_days,
                "exclude_user_items": cfg.exclude_user_items,
            },
        )
        include = db.frame(
            con, "rules_user_lists", _lists(path, "include_items", cfg.include_items)
        )
    active = pl.read_parquet(snapshot_dir / "items.parquet", columns=["item_id", "active"])
    active = active.filter("active").select("item_id")
    exclude = pairs.filter(pl.col("rule") != "consumables").select("user_id", "item_id")
    counts = _counts(cfg, users.len(), active, removed, pairs, exclude, include)
    return Applied(removed, exclude, include, counts)


@dataclass
class Removals:
    """What the rules that remove items take away, without any history (the evaluation)."""

    removed: pl.DataFrame  # item_id, rule: active items no user gets
    excluded: pl.DataFrame  # user_id, item_id: the per-user exclusion lists
    include: pl.DataFrame  # user_id, item_id: users with an inclusion list, and their lists


def _lists(path: Path, kind: str, on: bool) -> dict:
    """Parameters of ``sql/rules_user_lists.sql``."""
    return {"rules": str(path), "kind": kind, "on": on}


def removals(snapshot_dir: Path, users: pl.Series, cfg: RulesConfig) -> Removals:
    """The global removals, exclusion lists and inclusion lists of ``users`` under ``cfg``.

    Consumables are left out: they put back items a user had, and a held-out target is
    never one (history holds each item once).
    """
    path = snapshot_dir / FILE
    if not path.is_file():
        raise ContractError(
            f"{snapshot_dir} has no {FILE} (cut before business rules): run `nightrec snapshot`"
        )
    files = {"items": str(snapshot_dir / "items.parquet"), "rules": str(path)}
    with duckdb.connect() as con:
        con.register("rule_users", pl.DataFrame({"user_id": users}).to_arrow())
        removed = db.frame(
            con,
            "rules_global",
            {**files, "exclude_items": cfg.exclude_items, "include_items": cfg.include_items},
        )
        excluded = db.frame(
            con, "rules_user_lists", _lists(path, "exclude_user_items", cfg.exclude_user_items)
        )
        include = db.frame(
            con, "rules_user_lists", _lists(path, "include_items", cfg.include_items)
        )
    return Removals(removed, excluded, include)


def _counts(
    cfg: RulesConfig,
    n_users: int,
    active: pl.DataFrame,
    removed: pl.DataFrame,
    pairs: pl.DataFrame,
    exclude: pl.DataFrame,
    include: pl.DataFrame,
) -> dict[str, int]:
    """(user, item) pairs over the active catalog each rule took out (consumables: put back)."""
    on_active = pairs.join(active, on="item_id", how="semi")
    by_rule = dict(on_active.group_by("rule").len().iter_rows())

    def global_removed(rule: str) -> int:  # n users x items, less the pairs already excluded
        items = removed.filter(pl.col("rule") == rule).select("item_id")
        return n_users * items.height - exclude.join(items, on="item_id", how="semi").height

    per_user = 0
    if include.height:  # per list user: |catalog left \ X_u| - |(list_u & catalog left) \ X_u|
        left = active.join(removed, on="item_id", how="anti")  # the catalog after global rules
        users = include.select("user_id").unique()
        excluded = exclude.join(users, on="user_id", how="semi")
        excluded = excluded.join(left, on="item_id", how="semi")
        kept = (
            include.join(left, on="item_id", how="semi")
            .join(exclude, on=["user_id", "item_id"], how="anti")
            .height
        )
        per_user = users.height * left.height - excluded.height - kept
    values = {
        "consumables_readmitted": by_rule.get("consumables", 0),
        "exclude_user_items_removed": by_rule.get("exclude_user_items", 0),
        "exclude_items_removed": global_removed("exclude_items"),
        "include_items_removed": global_removed("include_items") + per_user,
    }
    return {metric: values[metric] for rule, metric in COUNTS if rule in cfg.applied()}


@dataclass
class Exclusions:
    """Per scored user, the model item indices the scorer must not return (CSR), and for
    users with an inclusion list the indices it may (``allow``: the rest is excluded)."""

    seq: np.ndarray  # [nnz] int64 excluded indices
    starts: np.ndarray  # [U]
    ends: np.ndarray  # [U]
    n_index: int  # M + 1
    allow: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # row -> indices

    def widths(self) -> np.ndarray:
        """[U] exclude-set sizes (the padded matrix's width per user)."""
        w = self.ends - self.starts
        for row, allowed in self.allow.items():
            w[row] = self.n_index - 1 - len(allowed)
        return w

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), E] exclude matrix of ``rows`` (indices into the users), 0-padded."""
        from nightrec.model import padded_sets

        out = padded_sets(self.seq, self.starts[rows], self.ends[rows])
        wide = [(i, r) for i, r in enumerate(rows.tolist()) if r in self.allow]
        if not wide:
            return out
        every = np.arange(1, self.n_index, dtype=np.int64)
        rest = {i: np.setdiff1d(every, self.allow[r], assume_unique=True) for i, r in wide}
        width = max(out.shape[1], *(len(v) for v in rest.values()))
        out = np.pad(out, ((0, 0), (0, width - out.shape[1])))
        for i, v in rest.items():
            out[i] = 0
            out[i, : len(v)] = v
        return out

    @classmethod
    def of(cls, user_ids: pl.Series, model_items: pl.DataFrame, applied: Applied) -> Exclusions:
        """For ``user_ids`` (scoring order) and the model's items (``item_id``, ``idx``)."""
        order = pl.DataFrame({"user_id": user_ids}).with_row_index("u")
        ex = (
            applied.exclude.join(model_items, on="item_id", how="inner")
            .join(order, on="user_id", how="inner")
            .sort("u", "idx")
        )
        u = ex["u"].to_numpy().astype(np.int64)
        ends = np.searchsorted(u, np.arange(len(user_ids)), side="right")
        starts = np.searchsorted(u, np.arange(len(user_ids)), side="left")
        out = cls(ex["idx"].to_numpy().astype(np.int64), starts, ends, model_items.height + 1)
        if applied.include.height:
            allowed = (
                applied.include.join(applied.exclude, on=["user_id", "item_id"], how="anti")
                .join(model_items, on="item_id", how="inner")
                .join(order, on="user_id", how="inner")
                .group_by("u")
                .agg(pl.col("idx").sort())
            )
            listed = applied.include.join(order, on="user_id", how="inner")["u"].unique()
            out.allow = {int(r): np.array([], dtype=np.int64) for r in listed}
            for r, idx in allowed.iter_rows():
                out.allow[int(r)] = np.asarray(idx, dtype=np.int64)
        return out
