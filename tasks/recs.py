"""Read the published tables: what the apps see.

Readers open ``serving/serving.duckdb`` (views over the live version's files, which
never change once written) and never the warehouse, so they neither wait for nor block
a nightly run.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from nightrec import db
from nightrec.config import ContractError, Settings
from nightrec.publish import SERVING_DB


def serving_path(settings: Settings) -> Path:
    path = settings.serving / SERVING_DB
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
    """Top ``limit`` of each user with item titles, from the live serving version."""
    with db.connect(serving_path(settings), read_only=True) as con:
        return db.frame(
            con,
            "select r.user_id, r.rank, r.item_id, r.score, r.reason, r.because_item_id, "
            "r.model_version, i.title from recommendations r "
            "left join items i using (item_id) "
            "where list_contains($users, r.user_id) and r.rank <= $limit "
            "order by r.user_id, r.rank",
            {"users": user_ids, "limit": limit},
        )
