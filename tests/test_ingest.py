"""Ingest: validation into rejected_rows, idempotence, de-duplication, formats, item upserts."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import duckdb
import numpy as np
import polars as pl
import pytest
from conftest import AS_OF, write_csv

from nightrec import embed, snapshot
from nightrec.config import Settings
from nightrec.ingest import ingest

EVENTS_HEADER = "user_id,item_id,event_type,ts,value"
ITEMS_HEADER = "item_id,title,category,active"


def query(settings: Settings, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def count(settings: Settings, table: str) -> int:
    return query(settings, f"select count(*) from {table}")[0][0]


def write_items(settings: Settings, name: str = "items-1.csv") -> None:
    write_csv(
        settings.landing / "items" / name,
        ITEMS_HEADER,
        [
            "i1,Hydrating Face Serum,Skincare,true",
            "i2,Argan Repair Shampoo,Hair Care,true",
            "i3,Matte Velvet Lipstick,Makeup,false",
            "i4,Broken Item,Makeup,maybe",  # bad: active is not a boolean
        ],
    )


# data rows (1-based) of the mixed file, and what is wrong with each bad one
MIXED_EVENTS = [
    "u1,i1,view,2026-10-01T10:00:00Z,",  # 1 good
    ",i1,view,2026-10-01T10:05:00Z,",  # 2 empty user_id
    "u2,i2,teleport,2026-10-01T11:00:00Z,",  # 3 unknown event_type
    "u2,i2,click,last tuesday,",  # 4 unparseable ts
    "u3,i3,rating,2026-10-02T09:00:00Z,five",  # 5 non-numeric value
    "u3,i3,rating,2026-10-02T09:00:00Z,4.5,extra",  # 6 ragged: 6 fields
    "u3,i2,purchase,1790000000,19.99",  # 7 good (epoch seconds)
    "u4,i3,add_to_cart,2026-10-03 12:00:00+00:00,",  # 8 good
    "u4,i1,rating,2026-10-04T08:30:00Z,4.5",  # 9 good
]
BAD = {  # row_number: (field, words the reason must contain)
    2: ("user_id", "user_id is empty"),
    3: ("event_type", "teleport"),
    4: ("ts", "last tuesday"),
    5: ("value", "five"),
    6: (None, "expected 5 fields, got 6"),
}
GOOD_ROWS = 4


def test_good_rows_load_and_bad_rows_are_rejected_with_reasons(settings: Settings) -> None:
    write_items(settings)
    events_file = write_csv(
        settings.landing / "events" / "events-1.csv", EVENTS_HEADER, MIXED_EVENTS
    )

    totals = ingest(settings).totals

    assert totals == {
        "files_new": 2,
        "files_skipped": 0,
        "rows": 4 + len(MIXED_EVENTS),
        "loaded": 3 + GOOD_ROWS,
        "rejected": 1 + len(BAD),
        "duplicates": 0,
        "files_quarantined": 0,
        "files_refused": 0,
    }
    assert count(settings, "events") == GOOD_ROWS
    assert count(settings, "items") == 3
    events = query(
        settings, "select user_id, item_id, event_type, value, ts from events order by ts"
    )
    utc = dt.UTC
    assert events == [
        ("u3", "i2", "purchase", 19.99, dt.datetime.fromtimestamp(1790000000, utc)),
        ("u1", "i1", "view", None, dt.datetime(2026, 10, 1, 10, tzinfo=utc)),
        ("u4", "i3", "add_to_cart", None, dt.datetime(2026, 10, 3, 12, tzinfo=utc)),
        ("u4", "i1", "rating", 4.5, dt.datetime(2026, 10, 4, 8, 30, tzinfo=utc)),
    ]

    rejected = query(
        settings,
        "select source_file, row_number, field, reason, raw from "
        "rejected_rows where kind = 'events' order by row_number",
    )
    assert [r[1] for r in rejected] == sorted(BAD)
    for source_file, row, field, reason, raw in rejected:
        want_field, words = BAD[row]
        assert source_file == str(events_file.resolve())
        assert field == want_field, (row, field, reason)
        assert words in reason, (row, reason)
        assert raw, f"row {row}: the raw row is lost"

    bad_items = query(
        settings, "select row_number, field, reason from rejected_rows where kind = 'items'"
    )
    assert bad_items == [(4, "active", "active 'maybe' is not a boolean")]
    # the file log agrees with the totals
    files = query(
        settings,
        "select kind, rows_total, rows_loaded, rows_rejected, rows_duplicate "
        "from ingested_files order by kind",
    )
    assert files == [("events", len(MIXED_EVENTS), GOOD_ROWS, len(BAD), 0), ("items", 4, 3, 1, 0)]


def _table_counts(settings: Settings) -> dict[str, int]:
    return {t: count(settings, t) for t in ("events", "items", "rejected_rows", "ingested_files")}


def test_ingesting_the_same_files_twice_changes_nothing(settings: Settings) -> None:
    write_items(settings)
    events_file = write_csv(
        settings.landing / "events" / "events-1.csv", EVENTS_HEADER, MIXED_EVENTS
    )
    first = ingest(settings).totals
    before = _table_counts(settings)

    second = ingest(settings).totals
    assert second["files_skipped"] == 2 and second["files_new"] == 0
    assert second["loaded"] == second["rejected"] == second["rows"] == 0
    assert _table_counts(settings) == before

    # the same bytes under another name are the same file
    shutil.copy(events_file, events_file.with_name("events-1-copy.csv"))
    third = ingest(settings).totals
    assert third["files_skipped"] == 3 and third["files_new"] == 0
    assert _table_counts(settings) == before
    assert first["files_new"] == 2


def test_redelivered_events_in_a_new_file_are_dropped_as_duplicates(settings: Settings) -> None:
    write_items(settings)
    write_csv(settings.landing / "events" / "events-1.csv", EVENTS_HEADER, MIXED_EVENTS)
    ingest(settings)
    assert count(settings, "events") == GOOD_ROWS
    ids_before = {r[0] for r in query(settings, "select event_id from events")}
    assert len(ids_before) == GOOD_ROWS

    # the four good events again, other order, other spelling of the same timestamps and
    # values, a repeat inside the file, and one genuinely new event
    write_csv(
        settings.landing / "events" / "events-2.csv",
        EVENTS_HEADER,
        [
            "u4,i1,rating,1791102600,4.50",  # = row 9 (epoch of 2026-10-04 08:30Z)
            " u1 ,i1,VIEW,2026-10-01 10:00:00+00:00,",  # = row 1 (spaces, case, ts form)
            "u4,i3,add_to_cart,2026-10-03T14:00:00+02:00,",  # = row 8 (same instant, +02:00)
            "u3,i2,purchase,2026-09-21T14:13:20Z,19.99",  # = row 7 (ISO of the epoch)
            "u3,i2,purchase,2026-09-21T14:13:20Z,19.99",  # repeat inside the file
            "u5,i2,view,2026-10-05T10:00:00Z,",  # new
        ],
    )
    res = ingest(settings)
    tot = res.totals
    assert tot["files_new"] == 1 and tot["files_skipped"] == 2
    assert tot["rows"] == 6 and tot["rejected"] == 0
    assert tot["loaded"] == 1 and tot["duplicates"] == 5
    assert count(settings, "events") == GOOD_ROWS + 1
    new = query(
        settings,
        "select user_id, item_id from events where event_id not in (select unnest($1::varchar[]))",
        [sorted(ids_before)],
    )
    assert new == [("u5", "i2")]


def test_events_with_ids_are_deduplicated_by_id(settings: Settings) -> None:
    header = "event_id,user_id,item_id,event_type,ts"
    write_csv(
        settings.landing / "events" / "a.csv",
        header,
        ["e1,u1,i1,view,2026-10-01T10:00:00Z", "e2,u1,i2,view,2026-10-01T10:00:00Z"],
    )
    write_csv(
        settings.landing / "events" / "b.csv",
        header,
        [
            "e2,u9,i9,click,2026-10-02T10:00:00Z",  # same id, other content: still a duplicate
            "e3,u1,i1,view,2026-10-01T10:00:00Z",  # other id, same content: a new event
        ],
    )
    tot = ingest(settings).totals
    assert tot["loaded"] == 3 and tot["duplicates"] == 1
    assert query(settings, "select event_id, user_id from events order by event_id") == [
        ("e1", "u1"),
        ("e2", "u1"),
        ("e3", "u1"),
    ]


FORMAT_EVENTS = {
    "user_id": ["u1", "u1", "u2", "u3"],
    "item_id": ["i1", "i2", "i1", "i3"],
    "event_type": ["view", "purchase", "rating", "click"],
    "ts": [
        dt.datetime(2026, 10, 1, 10, 0, 0),
        dt.datetime(2026, 10, 1, 10, 5, 30),
        dt.datetime(2026, 10, 2, 23, 59, 59),
        dt.datetime(2026, 10, 3, 0, 0, 1),
    ],
    "value": [None, 12.5, 4.0, None],
}


def _events_of(settings: Settings) -> list[tuple]:
    return query(
        settings,
        "select event_id, user_id, item_id, event_type, value, ts from events order by user_id, ts",
    )


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_events_load_like_csv(tmp_path, fmt: str) -> None:
    csv_home = Settings.from_env(home=tmp_path / "csv", models_dir=tmp_path / "m")
    write_csv(
        csv_home.landing / "events" / "events.csv",
        EVENTS_HEADER,
        [
            "u1,i1,view,2026-10-01T10:00:00Z,",
            "u1,i2,purchase,2026-10-01T10:05:30Z,12.5",
            "u2,i1,rating,2026-10-02T23:59:59Z,4",
            "u3,i3,click,2026-10-03T00:00:01Z,",
        ],
    )
    other = Settings.from_env(home=tmp_path / fmt, models_dir=tmp_path / "m")
    folder = other.landing / "events"
    folder.mkdir(parents=True)
    if fmt == "parquet":
        df = pl.DataFrame(FORMAT_EVENTS).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
        assert df.schema["ts"] == pl.Datetime("us", "UTC") and df.schema["value"] == pl.Float64
        df.write_parquet(folder / "events.parquet")
    else:
        # ISO text, a numeric value as an int, epoch seconds as a JSON number
        records = [
            {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": "2026-10-01T10:00:00Z"},
            {
                "user_id": "u1",
                "item_id": "i2",
                "event_type": "purchase",
                "ts": "2026-10-01T10:05:30+00:00",
                "value": 12.5,
            },
            {
                "user_id": "u2",
                "item_id": "i1",
                "event_type": "rating",
                "ts": 1790985599,
                "value": 4,
            },
            {
                "user_id": "u3",
                "item_id": "i3",
                "event_type": "click",
                "ts": "2026-10-03T00:00:01Z",
                "value": None,
            },
        ]
        lines = [json.dumps(r) for r in records]
        (folder / "events.jsonl").write_text("\n".join(lines) + "\n")

    want = ingest(csv_home).totals
    got = ingest(other).totals
    assert (
        want
        == got
        == {
            "files_new": 1,
            "files_skipped": 0,
            "rows": 4,
            "loaded": 4,
            "rejected": 0,
            "duplicates": 0,
            "files_quarantined": 0,
            "files_refused": 0,
        }
    )
    rows = _events_of(other)
    assert rows == _events_of(csv_home)  # content-hash ids included
    assert [r[4] for r in rows] == [None, 12.5, 4.0, None]
    assert rows[2][5] == dt.datetime(2026, 10, 2, 23, 59, 59, tzinfo=dt.UTC)


def test_file_missing_a_required_column_is_rejected_whole(settings: Settings) -> None:
    bad = write_csv(
        settings.landing / "events" / "a-no-type.csv",
        "user_id,item_id,ts,value",
        [
            "u1,i1,2026-10-01T10:00:00Z,",
            "u2,i2,2026-10-01T11:00:00Z,1",
            "u3,i3,2026-10-01T12:00:00Z,",
        ],
    )
    write_csv(
        settings.landing / "events" / "b-good.csv",
        EVENTS_HEADER,
        ["u9,i1,view,2026-10-01T10:00:00Z,"],
    )

    res = ingest(settings)  # must not raise

    by_name = {f.path.rsplit("/", 1)[-1]: f for f in res.files}
    assert (
        by_name["a-no-type.csv"].rows,
        by_name["a-no-type.csv"].loaded,
        by_name["a-no-type.csv"].rejected,
    ) == (3, 0, 3)
    assert by_name["b-good.csv"].loaded == 1
    assert query(settings, "select user_id from events") == [("u9",)]
    rejected = query(
        settings,
        "select source_file, row_number, field, reason, raw from rejected_rows order by row_number",
    )
    assert [(r[0], r[1], r[2]) for r in rejected] == [
        (str(bad.resolve()), n, "event_type") for n in (1, 2, 3)
    ]
    assert all("missing required column 'event_type'" in r[3] for r in rejected)
    assert '"u2"' in rejected[1][4]  # the raw row is kept
    # recorded as ingested, so a re-run does not reject it again
    assert ingest(settings).totals["files_skipped"] == 2
    assert count(settings, "rejected_rows") == 3


CATALOG = [
    "i1,Hydrating Face Serum,Skincare,true",
    "i2,Argan Repair Shampoo,Hair Care,true",
    "i3,Matte Velvet Lipstick,Makeup,true",
    "i4,Ceramic Hair Dryer,Tools,true",
    "i5,Citrus Eau de Parfum,Fragrance,true",
]


def test_item_upsert_replaces_item_and_embed_reencodes_only_it(settings: Settings) -> None:
    write_csv(settings.landing / "items" / "items-1.csv", ITEMS_HEADER, CATALOG)
    ingest(settings)
    snap = snapshot.snapshot(settings, AS_OF)
    first = embed.embed(settings, snap)
    assert first == {"items": 5, "encoded": 5, "reused": 0}
    before = np.load(snap / embed.EMBEDDINGS_FILE)
    assert before.shape == (5, 384)
    assert np.allclose(np.linalg.norm(before, axis=1), 1.0, atol=1e-5)

    write_csv(
        settings.landing / "items" / "items-2.csv",
        ITEMS_HEADER,
        ["i3,Glossy Cherry Lip Gloss,Makeup,true"],
    )
    tot = ingest(settings).totals
    assert tot["files_new"] == 1 and tot["loaded"] == 1
    assert count(settings, "items") == 5
    assert query(settings, "select item_id, title from items order by item_id") == [
        ("i1", "Hydrating Face Serum"),
        ("i2", "Argan Repair Shampoo"),
        ("i3", "Glossy Cherry Lip Gloss"),
        ("i4", "Ceramic Hair Dryer"),
        ("i5", "Citrus Eau de Parfum"),
    ]

    snap = snapshot.snapshot(settings, AS_OF)
    second = embed.embed(settings, snap)
    assert second == {"items": 5, "encoded": 1, "reused": 4}
    after = np.load(snap / embed.EMBEDDINGS_FILE)
    unchanged = [0, 1, 3, 4]
    assert np.array_equal(after[unchanged], before[unchanged])
    assert not np.allclose(after[2], before[2], atol=1e-3)
    # nothing changed: nothing encoded
    assert embed.embed(settings, snap) == {"items": 5, "encoded": 0, "reused": 5}


def test_item_update_older_than_stored_is_ignored(settings: Settings) -> None:
    header = "item_id,title,updated_at"
    write_csv(
        settings.landing / "items" / "a.csv",
        header,
        ["i1,Newer Title,2026-10-10T00:00:00Z", "i2,Keep Me,2026-10-10T00:00:00Z"],
    )
    write_csv(
        settings.landing / "items" / "b.csv",
        header,
        ["i1,Older Title,2026-10-01T00:00:00Z", "i2,Even Newer,2026-10-11T00:00:00Z"],
    )
    ingest(settings)
    assert query(settings, "select item_id, title from items order by item_id") == [
        ("i1", "Newer Title"),
        ("i2", "Even Newer"),
    ]
