"""Read the published tables: what the apps see."""

from __future__ import annotations

import polars as pl

from nightrec import db
from nightrec.config import ContractError, Settings
from nightrec.publish import SERVING_DB


def serving_path(settings: Settings):
    path = settings.serving / "current" / SERVING_DB
    if not path.is_file():
        raise ContractError(f"nothing published yet under {settings.serving}: run the pipeline")
    return path


def sample_users(settings: Settings, per_reason: int = 2) -> list[str]:
    """A few users of each kind (model and popular), smallest ids first: for demos."""
    with db.connect(serving_path(settings), read_only=True) as con:
        rows = con.execute(
            "select user_id from (select user_id, reason, row_number() over "
            "(partition by reason order by user_id) as n from recommendations where rank = 1) "
            "where n <= $n order by reason, user_id",
            {"n": per_reason},
        ).fetchall()
    return [r[0] for r in rows]


def recommendations_for(settings: Settings, user_ids: list[str], limit: int = 10) -> pl.DataFrame:
    """Top ``limit`` of each user with item titles, from the current serving version."""
    with db.connect(serving_path(settings), read_only=True) as con:
        recs = db.frame(
            con,
            "select user_id, rank, item_id, score, reason, because_item_id, model_version "
            "from recommendations where list_contains($users, user_id) and rank <= $limit "
            "order by user_id, rank",
            {"users": user_ids, "limit": limit},
        )
    items = pl.DataFrame(schema={"item_id": pl.Utf8, "title": pl.Utf8})
    if settings.warehouse.exists():
        with db.connect(settings.warehouse, read_only=True) as con:
            items = db.frame(
                con,
                "select item_id, title from items where list_contains($ids, item_id)",
                {"ids": recs["item_id"].unique().to_list()},
            )
    return recs.join(items, on="item_id", how="left", maintain_order="left")
