"""Hostile input, crashes and readers: bad options, model tampering, leftovers, a full
disk, memory bounds of scoring, and permissions. Every test here failed before its fix.

Fixtures come from test_model (a tiny exported version) and test_scoring (a small full
run), imported by name, hence the file-wide F811 (a parameter named as its fixture).
"""

# ruff: noqa: F811

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import duckdb
import numpy as np
import polars as pl
import pytest
from conftest import AS_OF
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from test_model import exported, one_torch_thread  # noqa: F401 - fixtures
from test_scoring import HEAVY_USER, TOP_N, isolated, run1, snapshot_users  # noqa: F401

from nightrec import db, errors, housekeeping, publish, registry, score
from nightrec.cli import main
from nightrec.config import (
    MAX_DATE,
    MIN_DATE,
    ContractError,
    EmbedConfig,
    ScoreConfig,
    Settings,
    TrainConfig,
    apply_umask,
    parse_date,
    path_id,
    share_serving,
)
from nightrec.model import padded_sets, plan_batches
from nightrec.synth import SynthConfig, generate


@pytest.fixture(autouse=True)
def keep_umask():
    """``nightrec.cli.main`` sets the process umask (as a CLI should): undo it per test."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``nightrec argv`` run in this process."""
    try:
        code = main(["-q", *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------- 6. bad options

BAD_OPTIONS = [  # (argv, what the one-line error must name)
    (["score", "--batch-size", "-1"], "batch_size"),
    (["score", "--batch-size", "0"], "batch_size"),
    (["score", "--batch-size", "100000000"], "batch_size"),
    (["score", "--top-n", "0"], "top_n"),
    (["score", "--top-n", "ten"], "--top-n"),
    (["score", "--topk", "fast"], "--topk"),
    (["train", "--epochs", "0"], "epochs"),
    (["run", "--epochs", "-3"], "epochs"),
    (["run", "--wait", "nan"], "--wait"),
    (["train", "--max-train-seconds", "0"], "max_train_seconds"),
    (["run", "--max-train-seconds", "nan"], "max_train_seconds"),
    (["evaluate", "--max-train-seconds", "ten"], "--max-train-seconds"),
    (["snapshot", "--as-of", "9999-12-31"], "outside 1970-01-01..9998-12-31"),
    (["snapshot", "--as-of", "1969-12-31"], "outside"),
    (["snapshot", "--as-of", "2026-11-01; rm -rf /"], "YYYY-MM-DD"),
    (["snapshot", "--as-of", "2026-11-01T02:00:00"], "YYYY-MM-DD"),
    (["snapshot", "--as-of", "2026-11-01\n"], "YYYY-MM-DD"),
    (["snapshot", "--as-of", "\uff12\uff10\uff12\uff16-11-01"], "YYYY-MM-DD"),  # full-width digits
    (["snapshot", "--as-of", "2026-02-30"], "not a valid date"),
    (["score", "--run-id", "a/b"], "run_id"),
    (["score", "--run-id", ".."], "run_id"),
    (["score", "--run-id", "run\n1"], "run_id"),
    (["publish", "--run-id", "x" * 201], "run_id"),
    (["recs", "--limit", "0"], "--limit"),
    (["recs", "--limit", "1000000"], "--limit"),
    (["recs", "--sample", "-2"], "--sample"),
    (["synth", "--users", "0"], "users"),
    (["synth", "--items", "1"], "items"),
    (["synth", "--seed", "-1"], "seed"),
]


@pytest.mark.parametrize(
    "argv, names", BAD_OPTIONS, ids=[" ".join(a).replace("\n", "\\n") for a, _ in BAD_OPTIONS]
)
def test_bad_options_fail_at_once_with_one_line(argv, names, tmp_path: Path, capsys) -> None:
    home = tmp_path / "home"
    code, err = cli(["--home", str(home), "--models-dir", str(tmp_path / "m"), *argv], capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"nightrec {argv[0]}: error: ") and names in err[0], err[0]
    assert not home.exists()  # refused before anything was written


def test_negative_batch_size_no_longer_publishes_only_cold_users(run1, capsys) -> None:
    """It used to exit 0 with a table of 7 cold users out of 500 (range with step -1)."""
    settings = run1["settings"]
    base = ["--home", str(settings.home), "--models-dir", str(settings.models_dir)]
    argv = ["score", "--as-of", AS_OF.isoformat(), "--run-id", "neg", "--batch-size", "-1"]
    code, err = cli([*base, *argv], capsys)
    assert code == 2 and "batch_size" in err[0]
    assert not settings.scores_dir("neg").exists()


@pytest.mark.parametrize(
    "cls, field, bad",
    [
        (TrainConfig, "epochs", 0),
        (TrainConfig, "batch_size", -1),
        (TrainConfig, "dim", True),  # a bool is not a count
        (TrainConfig, "max_history", 2.5),
        (TrainConfig, "lr", float("nan")),
        (TrainConfig, "lr", 0.0),
        (TrainConfig, "weight_decay", -1e-3),
        (TrainConfig, "max_train_seconds", 0.0),
        (TrainConfig, "max_train_seconds", float("inf")),
        (EmbedConfig, "batch_size", 0),
        (EmbedConfig, "max_length", 100_000),
        (EmbedConfig, "precision", "fp16"),
        (ScoreConfig, "batch_size", -1),
        (ScoreConfig, "batch_size", 0),
        (ScoreConfig, "max_exclude_cells", 0),
        (ScoreConfig, "popular_window_days", 0),
        (SynthConfig, "users", -1),
    ],
)
def test_configs_refuse_out_of_range_values(cls, field, bad) -> None:
    """The dataclasses hold the bounds, so the DAG's Params and the CLI share them."""
    with pytest.raises(ContractError, match=field):
        cls(**{field: bad})


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_score_batch_size_accepted_exactly_within_bounds(n: int) -> None:
    try:
        ScoreConfig(batch_size=n)
    except ContractError:
        assert not 1 <= n <= 65_536
    else:
        assert 1 <= n <= 65_536


_ISO = st.dates().map(lambda d: d.isoformat())
_DATES = st.one_of(
    st.text(max_size=24),
    _ISO,
    st.tuples(_ISO, st.text(min_size=1, max_size=12)).map("".join),  # a date, then anything
    st.tuples(st.text(min_size=1, max_size=3), _ISO).map("".join),
)


@given(_DATES)
def test_parse_date_reads_the_whole_string_or_refuses(text: str) -> None:
    """Never a prefix: a date comes back only when the whole text is that date."""
    try:
        got = parse_date(text)
    except ContractError:
        return
    assert got.isoformat() == text and MIN_DATE <= got <= MAX_DATE


@given(st.dates(min_value=MIN_DATE, max_value=MAX_DATE))
def test_parse_date_accepts_every_date_in_range(day) -> None:
    assert parse_date(day.isoformat()) == day


_IDS = st.text(alphabet="Aa09_.~:+-", min_size=1, max_size=40)


@given(_IDS, _IDS)
def test_run_ids_map_one_to_one_onto_plain_folder_names(a: str, b: str) -> None:
    if set(a) <= {"."}:
        with pytest.raises(ContractError):
            path_id(a, "run_id")
        return
    name = path_id(a, "run_id")
    assert re.fullmatch(r"[A-Za-z0-9_%-]+", name)  # never hidden, never *.tmp, no separator
    assert unquote(name) == a  # decodable, hence injective
    if not set(b) <= {"."}:
        assert (path_id(b, "run_id") == name) == (a == b)


def test_airflow_run_ids_keep_working_and_stay_apart(settings: Settings) -> None:
    ids = [
        "manual__2026-11-01T02:00:00+00:00",
        "manual__2026-11-01T02:00:00.123456+00:00",
        "scheduled__2026-11-01T02:00:00+00:00",
        "backfill__2026-11-01T02:00:00+00:00",
        "asset_triggered__2026-11-01T02:00:00+00:00",
        "manual__2026-11-01",
        "a:b",
        "a+b",
        "a_b",
        "a%3Ab",  # looks like an encoding, but % is not in the id alphabet
    ]
    folders = []
    for run_id in ids[:-1]:
        folder = settings.scores_dir(run_id)
        assert folder.parent == settings.home / "scores"
        folders.append(folder.name)
    assert len(set(folders)) == len(folders)
    assert settings.scores_dir("manual__2026-11-01").name == "manual__2026-11-01"
    with pytest.raises(ContractError):
        settings.scores_dir(ids[-1])


def test_publish_coverage_check_catches_lost_users(run1, tmp_path: Path) -> None:
    settings = isolated(run1, tmp_path)
    stats = score.score(settings, run1["snapshot"], "cov", ScoreConfig(top_n=TOP_N, provider="cpu"))
    everyone = len(snapshot_users(run1))
    assert stats["users"] == stats["users_written"] + stats["users_empty"] == everyone
    parts = sorted(settings.scores_dir("cov").glob("shard-*/part-*.parquet"))
    scored = pl.scan_parquet(parts).select(pl.col("user_id").n_unique()).collect().item()
    publish.check_coverage([stats], run1["snapshot"], scored)  # complete: passes
    # what --batch-size -1 did: the model's users lost, the cold users' part published alone
    cold_only = pl.read_parquet(parts[-1])
    assert set(cold_only["reason"]) == {"popular"}
    with pytest.raises(ContractError, match=f"cover {cold_only['user_id'].n_unique()} of"):
        publish.check_coverage([stats], run1["snapshot"], cold_only["user_id"].n_unique())


def test_sql_takes_values_as_bound_parameters_only() -> None:
    """Values reach SQL as bound parameters. The text substitutions are the reader catalog's
    views over nightrec's own Parquet paths (DuckDB cannot prepare DDL), through
    ``db.path_literal``, which refuses any path that could end the literal, and the alias of
    a landing file's row, which nightrec makes (``t``, ``t1``…), never a name from the file."""
    from nightrec.config import SQL_DIR
    from nightrec.landing_read import load_sql

    slots = {
        f.stem: set(re.findall(r"\{([a-z_]+)\}", f.read_text())) for f in SQL_DIR.glob("*.sql")
    }
    assert {k: v for k, v in slots.items() if v} == {
        "serving_catalog": {"live_parquet", "live_items", "all_parquet", "live_similar"},
        "load_landed_csv": {"row"},
        "load_landed_parquet": {"row"},
    }
    hostile = ["T", "t1", "t2); drop table events; --", "{row}"]
    text = load_sql("load_landed_csv", hostile)
    assert "{row}" not in text and "drop table" not in text
    assert set(re.findall(r"select (\S+) as _rec", text)) == {"t2"}
    assert re.search(r"\) as t2\s*$", text)
    for bad in ("/srv/x'; drop table runs; --", "/srv/a\\b", "/srv/a\nb", "/srv/a\0b", '/srv/"x"'):
        with pytest.raises(ValueError):
            db.path_literal(Path(bad))


# ---------------------------------------------------------------- 7. model tampering

KEY, OTHER_KEY = "k3y-for-tests-" + "a" * 20, "another-key-" + "b" * 20


def _manifest(folder: Path) -> dict:
    return json.loads((folder / registry.MANIFEST).read_text())


def _edit(folder: Path, change) -> None:
    """Edit manifest.json as an attacker would, without resealing it."""
    manifest = _manifest(folder)
    change(manifest)
    (folder / registry.MANIFEST).write_text(json.dumps(manifest, indent=2))


def _swap_scorer_and_hash(folder: Path) -> None:
    scorer = folder / registry.SCORER
    scorer.write_bytes(b"another graph")
    _edit(folder, lambda m: m["files"].update({registry.SCORER: registry.sha256(scorer)}))


def _symlinked_scorer(folder: Path) -> None:
    elsewhere = folder.parent / "elsewhere.onnx"
    shutil.copy(folder / registry.SCORER, elsewhere)  # same bytes: the checksum still matches
    (folder / registry.SCORER).unlink()
    (folder / registry.SCORER).symlink_to(elsewhere)


def _resealed(change):
    """Edit and recompute the digest (no key): only a signature can tell."""

    def tamper(folder: Path) -> None:
        manifest = _manifest(folder)
        change(manifest)
        registry.write_manifest(folder, manifest)

    return tamper


TAMPERING = [  # (id, tamper(folder), message)
    ("empty files list", lambda d: _edit(d, lambda m: m.update(files={})), "changed after export"),
    ("drop scorer entry", lambda d: _edit(d, lambda m: m["files"].pop(registry.SCORER)), "changed"),
    ("swap scorer", lambda d: (d / registry.SCORER).write_bytes(b"evil"), "checksum mismatch"),
    ("swap scorer and its hash", _swap_scorer_and_hash, "changed after export"),
    ("edit version", lambda d: _edit(d, lambda m: m.update(version="v-other")), "changed"),
    (
        "edit config.max_history",
        lambda d: _edit(d, lambda m: m["config"].update(max_history=7)),
        "changed after export",
    ),
    ("add an extra file", lambda d: (d / "extra.onnx").write_bytes(b"x"), "not in manifest"),
    ("remove a file", lambda d: (d / "encoder.pt").unlink(), "listed files missing"),
    (
        "replace the digest",
        lambda d: _edit(d, lambda m: m.update(manifest_sha256="0" * 64)),
        "manifest_sha256 mismatch",
    ),
    ("remove the digest", lambda d: _edit(d, lambda m: m.pop(registry.DIGEST)), "unsealed"),
    ("manifest not JSON", lambda d: (d / registry.MANIFEST).write_text("{"), "not valid JSON"),
    ("manifest not an object", lambda d: (d / registry.MANIFEST).write_text("[]"), "JSON object"),
    ("scorer is a symlink", _symlinked_scorer, "not a regular file"),
    (
        "resealed: no scorer listed",
        _resealed(lambda m: m["files"].pop(registry.SCORER)),
        "does not list scorer.onnx",
    ),
    (
        "resealed: path outside",
        _resealed(lambda m: m["files"].update({"../x": "0" * 64})),
        "listed files missing",
    ),
    (
        "resealed: other version",
        _resealed(lambda m: m.update(version="v-other")),
        "not for this folder",
    ),
]


@pytest.fixture
def version_copy(exported, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the tiny exported version (``v-parity``), checked untampered."""
    monkeypatch.delenv(registry.KEY_ENV, raising=False)
    folder = tmp_path / "models" / exported[1].name
    shutil.copytree(exported[1], folder)
    assert registry.verify(folder)["version"] == folder.name
    return folder


@pytest.mark.parametrize(
    "tamper, message", [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING]
)
def test_tampered_model_versions_are_refused(version_copy: Path, tamper, message) -> None:
    tamper(version_copy)
    with pytest.raises(ContractError, match=re.escape(message)):
        registry.verify(version_copy)


def test_a_renamed_or_copied_version_is_refused(version_copy: Path) -> None:
    other = version_copy.with_name("v-newer")
    shutil.copytree(version_copy, other)
    with pytest.raises(ContractError, match="not for this folder"):
        registry.verify(other)
    with pytest.raises(ContractError, match="not for this folder"):
        registry.promote(other.parent, other.name)  # never promoted
    (other.parent / "current").symlink_to("v-newer")  # a pointer moved by hand
    with pytest.raises(ContractError, match="not for this folder"):
        registry.load_current(other.parent)  # scoring would refuse it


def test_signed_export_verifies_only_with_its_key(exported, tmp_path: Path, monkeypatch) -> None:
    model, folder = exported
    monkeypatch.setenv(registry.KEY_ENV, KEY)
    index = pl.read_parquet(folder / "items.parquet")
    example = np.tile(np.arange(1, 7, dtype=np.int64), (8, 1))
    os.umask(0o022)
    signed = registry.export(
        model, tmp_path / "reg", "v-signed", index, {"max_history": 6}, {}, example_history=example
    )
    assert stat.S_IMODE((tmp_path / "reg").stat().st_mode) == 0o700  # a new registry: private
    manifest = registry.verify(signed)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest[registry.SIGNATURE])

    monkeypatch.setenv(registry.KEY_ENV, OTHER_KEY)  # wrong HMAC key
    with pytest.raises(ContractError, match="bad manifest.json signature"):
        registry.verify(signed)
    monkeypatch.delenv(registry.KEY_ENV)  # without a key, the digest still holds
    assert registry.verify(signed)["version"] == "v-signed"
    # an edit with a recomputed digest (no key) passes a keyless check, and no keyed one
    _resealed(lambda m: m["config"].update(max_history=7))(signed)
    assert registry.verify(signed)["config"]["max_history"] == 7
    monkeypatch.setenv(registry.KEY_ENV, KEY)
    with pytest.raises(ContractError, match="not signed"):
        registry.verify(signed)
    monkeypatch.setenv(registry.KEY_ENV, OTHER_KEY)  # resealed by someone with another key
    _resealed(lambda m: None)(signed)
    monkeypatch.setenv(registry.KEY_ENV, KEY)
    with pytest.raises(ContractError, match="bad manifest.json signature"):
        registry.verify(signed)
    monkeypatch.setenv(registry.KEY_ENV, "short")
    with pytest.raises(ContractError, match="shorter than 16 bytes"):
        registry.verify(signed)


def test_unsigned_versions_are_refused_when_a_key_is_set(version_copy: Path, monkeypatch) -> None:
    monkeypatch.setenv(registry.KEY_ENV, KEY)
    with pytest.raises(ContractError, match="not signed"):
        registry.verify(version_copy)


# ---------------------------------------------------------------- 8. leftovers


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _age(path: Path, age_s: float) -> Path:
    """Set the mtime of ``path`` and everything under it ``age_s`` seconds into the past."""
    when = time.time() - age_s
    for p in [*(path.rglob("*") if path.is_dir() and not path.is_symlink() else []), path]:
        os.utime(p, (when, when), follow_symlinks=False)
    return path


def _put(path: Path, size: int = 10, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return _age(path, age_s) if age_s else path


def _link(path: Path, target: Path | str, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return _age(path, age_s)


def test_clean_leftovers_removes_dead_runs_temporaries_only(settings: Settings, tmp_path):
    home, models, old = settings.home, settings.models_dir, 2 * 3600
    dead, me = _dead_pid(), os.getpid()
    stale = [
        _age(_put(home / "snapshots/2026-10-30.tmp/items.parquet", 1 << 20).parent, old),
        _age(_put(home / "snapshots/2026-10-29.old/users.parquet").parent, old),
        _put(home / "snapshots/2026-10-31/embeddings.npy.tmp", 100, old),
        _age(
            _put(
                home / "scores/manual__2026-10-31/shard-00000-of-00001.tmp/part-00000.parquet",
                1 << 20,
            ).parent,
            old,
        ),
        _age(_put(home / "serving/versions/.20261031-abc.tmp/serving.duckdb").parent, old),
        _age(_put(home / "serving/versions/20261030-def/serving.duckdb.tmp/t.block").parent, old),
        _put(home / f"serving/.serving.duckdb.{dead}.tmp", 10, old),
        _link(home / f"serving/.current.{dead}", "versions/20261030-def", old),
        _age(_put(home / "warehouse.duckdb.tmp/duckdb_temp_storage.tmp").parent, old),
        _age(_put(models / ".v20261031-abc.tmp/scorer.onnx").parent, old),
        _link(models / f".current.{dead}", "v1", old),
    ]
    outside = _put(tmp_path / "outside" / "keep.me")
    stale.append(_link(home / "scores/r/evil.tmp", outside.parent, old))  # removed, not followed
    kept = [
        _put(home / "snapshots/2026-10-31/items.parquet", 10, old),
        _put(home / "scores/manual__2026-10-31/shard-00000-of-00002/_SUCCESS.json", 10, old),
        _put(home / "serving/versions/20261030-def/serving.duckdb", 10, old),
        _put(models / "v1/manifest.json", 10, old),
        _put(home / ".run.lock", 10, old),
        _put(home / "landing/events/upload.csv.tmp", 10, old),  # upstream's upload in progress
        _put(home / "scores/run2/shard-00000-of-00002.tmp/part-00000.parquet"),  # fresh
        _link(models / f".current.{me}", "v1", old),  # its process lives
        _put(home / f"serving/.serving.duckdb.{me}.tmp", 10, old),
    ]
    writing = _age(
        _put(home / "scores/run3/shard-00001-of-00002.tmp/part-00000.parquet").parent, old
    )
    _put(writing / "part-00001.parquet")  # a live writer just added a part: not stale
    kept.append(writing)
    open_db = home / "serving/versions/20261029-xyz/serving.duckdb"
    open_db.parent.mkdir(parents=True)
    con = duckdb.connect(str(open_db))  # an open connection locks its file
    try:
        spill = _age(_put(open_db.with_name("serving.duckdb.tmp") / "t.block").parent, old)
        kept.append(spill)

        preview = housekeeping.clean_leftovers(settings, dry_run=True)
        assert all(p.exists() or p.is_symlink() for p in stale)
        result = housekeeping.clean_leftovers(settings)
    finally:
        con.close()
    assert sorted(result["removed"]) == sorted(preview["removed"]) == sorted(map(str, stale))
    assert not [p for p in stale if p.exists() or p.is_symlink()]
    assert all(p.exists() for p in kept)
    assert outside.exists() and result["bytes"] >= 2 << 20
    assert result["kept_in_use"] == 3  # two live-pid names and the open database's spill


def test_clean_leftovers_respects_the_age_threshold(settings: Settings) -> None:
    leftover = _age(_put(settings.models_dir / ".v1.tmp/encoder.pt").parent, 600)
    assert housekeeping.clean_leftovers(settings)["removed"] == []  # 10 minutes: may be live
    assert housekeeping.clean_leftovers(settings, older_than_s=300)["removed"] == [str(leftover)]
    with pytest.raises(ContractError):
        housekeeping.clean_leftovers(settings, older_than_s=-1)


# ---------------------------------------------------------------- 8. disk full


def _real_enospc(write) -> BaseException:
    """The error of a real write to /dev/full (the kernel answers ENOSPC)."""
    try:
        write("/dev/full")
    except BaseException as exc:  # noqa: BLE001
        return exc
    raise AssertionError("writing to /dev/full did not fail")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "write, named",
    [
        (lambda p: Path(p).write_bytes(b"\0" * (1 << 16)), "disk full (No space left on device)"),
        (lambda p: pl.DataFrame({"a": np.arange(100_000)}).write_parquet(p), "disk full"),
        (lambda p: duckdb.sql(f"copy (from range(100000)) to '{p}' (format parquet)"), "disk full"),
        # numpy's tofile (np.save to a file, as embed does) drops the errno: a short write
        (lambda p: np.zeros(100_000).tofile(p), "a write was cut short (disk full"),
    ],
    ids=["python", "polars", "duckdb", "numpy"],
)
def test_real_disk_full_errors_are_named(write, named) -> None:
    exc = _real_enospc(write)
    assert errors.describe(exc).startswith(named), exc
    # DuckDB's "cannot rollback" raised while handling it still reads as a full disk
    con = duckdb.connect()
    try:
        try:
            raise exc
        except BaseException:
            con.execute("rollback")  # no transaction: raises, with exc as its context
    except duckdb.Error as masked:
        assert "cannot rollback" in str(masked)
        assert errors.describe(masked).startswith(named)
    finally:
        con.close()


def test_other_errors_are_not_environment_faults() -> None:
    for exc in (ValueError("bad"), ContractError("bad input"), FileNotFoundError(2, "gone", "x")):
        assert errors.describe(exc) is None
    con = duckdb.connect()
    errors.rollback_quietly(con)  # no transaction: logged, not raised
    con.close()


LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from nightrec.cli import main
sys.exit(main(sys.argv[2:]))
"""


RAW_INGEST = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))
from nightrec.config import Settings
from nightrec.ingest import ingest
try:
    ingest(Settings.from_env(home=sys.argv[1], models_dir=sys.argv[2]))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _nightrec_limited(limit: int, *argv: str) -> subprocess.CompletedProcess:
    """``nightrec argv`` in a child process that may not write files past ``limit`` bytes."""
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), "-q", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_full_disk_during_ingest_raises_the_cause_not_the_rollback(tmp_path: Path) -> None:
    """DuckDB aborts the transaction on the failed write; ingest's rollback must not hide it."""
    generate(SynthConfig(users=2000, items=100, seed=1), tmp_path / "home" / "landing")
    args = [str(tmp_path / "home"), str(tmp_path / "models")]
    out = subprocess.run(
        [sys.executable, "-c", RAW_INGEST, *args], capture_output=True, text=True, timeout=300
    )
    assert "File too large" in out.stdout and "cannot rollback" not in out.stdout, out


def test_full_disk_in_ingest_and_snapshot_is_one_line_exit_3(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes real writes fail (EFBIG) without root; the kernel's ENOSPC reads
    the same way (checked above with /dev/full, and by hand on a 2 MB tmpfs)."""
    home = ["--home", str(tmp_path / "home"), "--models-dir", str(tmp_path / "models")]
    generate(SynthConfig(users=2000, items=100, seed=1), tmp_path / "home" / "landing")
    full = _nightrec_limited(500_000, *home, "ingest")
    assert full.returncode == 3, full.stderr
    line = full.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"nightrec ingest: error: file size limit reached \(File too large\)"
        r" writing \S+warehouse\.duckdb\S*: .*",
        line,
    ), line
    assert "Traceback" not in full.stderr and "cannot rollback" not in line

    again = _nightrec_limited(1 << 40, *home, "ingest")  # space back: the retry completes
    assert again.returncode == 0, again.stderr
    snap = _nightrec_limited(100_000, *home, "snapshot", "--as-of", AS_OF.isoformat())
    assert snap.returncode == 3, snap.stderr
    assert (
        snap.stderr.strip()
        .splitlines()[-1]
        .startswith("nightrec snapshot: error: file size limit reached")
    )
    assert "Traceback" not in snap.stderr


# ---------------------------------------------------------------- 9. scoring memory


@given(
    st.lists(st.integers(min_value=0, max_value=500), max_size=300),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=5000),
)
@hsettings(max_examples=300)
def test_plan_batches_covers_everyone_in_order_under_the_cap(widths, batch_size, cap) -> None:
    w = np.array(widths, dtype=np.int64)
    plan = plan_batches(w, batch_size, cap)
    assert [i for s in plan for i in range(s.start, s.stop)] == list(range(len(w)))
    for s in plan:
        n = s.stop - s.start
        assert 1 <= n <= batch_size
        assert n * max(int(w[s].max()), 1) <= cap or n == 1  # a wider user: alone
    plain = -(-len(w) // batch_size)
    if len(w) and batch_size * max(int(w.max()), 1) <= cap:
        assert len(plan) == plain  # nothing to split: the usual batches


def test_long_history_is_scored_in_bounded_batches_same_results(
    run1, tmp_path: Path, monkeypatch
) -> None:
    settings = isolated(run1, tmp_path)
    snap = run1["snapshot"]
    seen = pl.read_parquet(snap / "interactions.parquet").group_by("user_id").len()
    longest = seen.filter(pl.col("user_id") == HEAVY_USER)["len"].item()
    assert longest == seen["len"].max() and longest > 5 * seen["len"].median()
    cap, batch = 3 * longest, 64
    shapes: list[tuple[int, int]] = []

    def spy(*args):  # the real padded_sets; records what goes to ONNX Runtime
        out = padded_sets(*args)
        shapes.append(out.shape)
        return out

    monkeypatch.setattr(score, "padded_sets", spy)
    cfg = ScoreConfig(top_n=TOP_N, provider="cpu", batch_size=batch)
    score.score(settings, snap, "whole", cfg)
    assert max(r * c for r, c in shapes) > cap  # unbounded: the heavy user widens its batch
    shapes.clear()
    cfg = ScoreConfig(top_n=TOP_N, provider="cpu", batch_size=batch, max_exclude_cells=cap)
    score.score(settings, snap, "split", cfg)
    assert max(r * c for r, c in shapes) <= cap
    assert max(c for _, c in shapes) == longest

    def recs(run_id: str) -> pl.DataFrame:
        parts = sorted(settings.scores_dir(run_id).glob("shard-*/part-*.parquet"))
        return pl.read_parquet(parts).sort("user_id", "rank")

    whole, split = recs("whole"), recs("split")
    key = ["user_id", "rank", "item_id", "reason", "because_item_id"]
    assert split.select(key).equals(whole.select(key))
    assert np.allclose(split["score"].to_numpy(), whole["score"].to_numpy(), atol=1e-5)
    heavy = split.filter(pl.col("user_id") == HEAVY_USER)
    assert heavy.height > 0
    assert heavy.join(run1["seen"], on=["user_id", "item_id"], how="inner").height == 0


# ---------------------------------------------------------------- 10. permissions


def _private(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that the group or others may use."""
    found = [root, *root.rglob("*")]
    return [
        f"{p} {oct(p.lstat().st_mode & 0o777)}"
        for p in found
        if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]


def test_fresh_state_is_owner_only_under_umask_022(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("NIGHTREC_UMASK", raising=False)
    os.umask(0o022)  # a typical login umask: world-readable files
    home = tmp_path / "home"
    base = ["--home", str(home), "--models-dir", str(tmp_path / "models")]
    for argv in (
        ["synth", "--users", "60", "--items", "20"],
        ["ingest"],
        ["snapshot", "--as-of", AS_OF.isoformat()],
    ):
        assert cli([*base, *argv], capsys)[0] == 0
    assert (home / "warehouse.duckdb").is_file()
    assert _private(home) == []
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "warehouse.duckdb").stat().st_mode) == 0o600


def test_warehouse_is_owner_only_without_the_cli(settings: Settings) -> None:
    """The DAG's wrappers may run under any umask: db.connect still keeps it private."""
    os.umask(0o022)
    with db.connect(settings.warehouse):
        pass
    assert stat.S_IMODE(settings.warehouse.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o700


@pytest.mark.parametrize("raw, mask", [(None, 0o077), ("", 0o077), ("027", 0o027), ("0007", 0o007)])
def test_apply_umask(raw, mask, monkeypatch) -> None:
    if raw is None:
        monkeypatch.delenv("NIGHTREC_UMASK", raising=False)
    else:
        monkeypatch.setenv("NIGHTREC_UMASK", raw)
    assert apply_umask() == mask
    assert os.umask(mask) == mask


@pytest.mark.parametrize("raw", ["000", "020", "abc", "0o77", "7777", "77"])
def test_apply_umask_refuses_bad_masks(raw, monkeypatch) -> None:
    monkeypatch.setenv("NIGHTREC_UMASK", raw)
    with pytest.raises(ContractError, match="NIGHTREC_UMASK"):
        apply_umask()


def test_serving_output_can_be_opened_to_a_group(settings: Settings, monkeypatch) -> None:
    os.umask(0o077)
    version = settings.serving / "versions" / "20261101-abc"
    _put(version / "serving.duckdb")
    _put(version / "recommendations.parquet")
    with db.connect(settings.warehouse):
        pass
    monkeypatch.delenv("NIGHTREC_SERVING_MODE", raising=False)
    share_serving(settings, version)  # unset: nothing changes
    assert stat.S_IMODE((version / "serving.duckdb").stat().st_mode) == 0o600

    monkeypatch.setenv("NIGHTREC_SERVING_MODE", "0640")
    share_serving(settings, version)
    assert stat.S_IMODE((version / "serving.duckdb").stat().st_mode) == 0o640
    assert stat.S_IMODE(version.stat().st_mode) == 0o750
    for above in (settings.home, settings.serving, settings.serving / "versions"):
        assert stat.S_IMODE(above.stat().st_mode) == 0o710  # reach it, list nothing
    assert stat.S_IMODE(settings.warehouse.stat().st_mode) == 0o600
    for bad in ("0666", "0755", "0400", "640x"):
        monkeypatch.setenv("NIGHTREC_SERVING_MODE", bad)
        with pytest.raises(ContractError, match="NIGHTREC_SERVING_MODE"):
            share_serving(settings, version)


def test_lock_wait_from_the_environment_is_checked(monkeypatch) -> None:
    """NIGHTREC_LOCK_WAIT_S is read like NIGHTREC_MAX_TRAIN_SECONDS: blank is the default,
    0 is allowed (no wait), and a bad value names the variable instead of a traceback."""
    from nightrec import db

    monkeypatch.setenv("NIGHTREC_LOCK_WAIT_S", " ")
    assert db.lock_wait_s() == db.LOCK_WAIT_S
    monkeypatch.setenv("NIGHTREC_LOCK_WAIT_S", "0")
    assert db.lock_wait_s() == 0.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("NIGHTREC_LOCK_WAIT_S", bad)
        with pytest.raises(ContractError, match="NIGHTREC_LOCK_WAIT_S"):
            db.lock_wait_s()
