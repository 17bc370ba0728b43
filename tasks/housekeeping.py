"""Housekeeping: what a nightrec home piles up over time, and what may go.

Every step writes under a temporary name and renames when done, and removes its own
temporary name when it runs again for the *same* id. A run killed halfway (OOM, a lost
worker, Ctrl-C) leaves that name behind, and the next day's run has new ids, so without
housekeeping it stays forever (a killed scoring run once left 21 MB).

Sections: **leftovers** (temporary files of dead runs, ``clean_leftovers``); retention
of finished scores, snapshots and models belongs below it, in its own section.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from nightrec.config import ContractError, Settings

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- leftovers

LEFTOVERS_AGE_S = 3600  # untouched this long: no live step is still writing it
_PID = re.compile(r"\.(\d+)(?=\.tmp|$)")  # .current.<pid>, .serving.duckdb.<pid>.tmp
_LINK = re.compile(r"\.current\.\d+")  # a pointer swap's temporary symlink


def _places(settings: Settings) -> list[tuple[Path, int, tuple[str, ...]]]:
    """(folder, depth, suffixes) to search: depth 2 also searches each finished subfolder."""
    home = settings.home
    return [
        (home, 1, (".tmp",)),  # warehouse.duckdb.tmp: DuckDB's spill folder
        (home / "snapshots", 2, (".tmp", ".old")),  # <date>.tmp, <date>.old, <date>/*.npy.tmp
        (home / "scores", 2, (".tmp",)),  # <run>/shard-*-of-*.tmp
        (home / "serving", 1, (".tmp",)),  # .current.<pid>, .<file>.<pid>.tmp
        (home / "serving" / "versions", 2, (".tmp",)),  # .<id>.tmp, <id>/serving.duckdb.tmp
        (settings.models_dir, 1, (".tmp",)),  # .<version>.tmp, .current.<pid>
    ]


def _is_leftover(path: Path, suffixes: tuple[str, ...], top: bool) -> bool:
    name = path.name
    if name.endswith(".tmp"):
        return True
    if top and ".old" in suffixes and name.endswith(".old"):  # snapshot's swap-out copy
        return True
    return bool(_LINK.fullmatch(name)) and path.is_symlink()


def _candidates(settings: Settings) -> Iterator[Path]:
    for folder, depth, suffixes in _places(settings):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for entry in sorted(folder.iterdir()):
            if _is_leftover(entry, suffixes, top=True):
                yield entry
            elif depth == 2 and entry.is_dir() and not entry.is_symlink():
                for inner in sorted(entry.iterdir()):
                    if _is_leftover(inner, suffixes, top=False):
                        yield inner


def _tree(path: Path) -> Iterator[os.stat_result]:
    """lstat of ``path`` and of everything under it, never following a symlink."""
    yield path.lstat()
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    yield os.lstat(os.path.join(root, name))
                except FileNotFoundError:
                    pass


def _locked_inodes() -> set[int] | None:
    """Inodes with a POSIX or flock lock held (``/proc/locks``); None where unreadable.

    DuckDB locks its database file while a connection is open: a spill folder beside a
    locked file belongs to a live connection, which cannot recreate it once deleted.
    Only inode numbers are compared (not devices): a collision keeps a file, never drops one.
    """
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    return {int(m.group(1)) for m in re.finditer(r"\b[0-9a-f]+:[0-9a-f]+:(\d+)\b", text)}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _in_use(path: Path, stats: list[os.stat_result], locked: set[int] | None) -> str | None:
    """Why ``path`` (whose tree has ``stats``) may belong to a live process, else None."""
    m = _PID.search(path.name) if path.name.startswith(".") else None
    if m and _pid_alive(int(m.group(1))):
        return f"pid {m.group(1)} is alive"
    stats = list(stats)
    if path.name.endswith(".duckdb.tmp"):  # a spill folder: its database may be open
        beside = path.with_name(path.name[: -len(".tmp")])
        if beside.exists():
            stats.append(beside.lstat())
        if locked is None:
            return "cannot tell whether its database is open (no /proc/locks)"
    if locked and any(s.st_ino in locked for s in stats):
        return "a DuckDB file of it is open (locked)"
    return None


def clean_leftovers(
    settings: Settings, older_than_s: float = LEFTOVERS_AGE_S, dry_run: bool = False
) -> dict:
    """Remove temporary files and folders that killed runs left behind.

    Searched: the home (DuckDB spill folders ``*.duckdb.tmp``), ``snapshots/``
    (``<date>.tmp``, ``<date>.old``, ``<date>/*.tmp``), ``scores/<run>/*.tmp``,
    ``serving/`` (``.current.<pid>`` links, ``.<file>.<pid>.tmp``), ``serving/versions/``
    (``.<id>.tmp``, ``<id>/*.duckdb.tmp``) and the model registry (``.<version>.tmp``,
    ``.current.<pid>``). Never the landing folder (upstream's uploads in progress).

    A candidate goes only if nothing in it changed for ``older_than_s`` seconds, the pid in
    its name (if any) is not alive, and no DuckDB file in or beside it is locked. Symlinks
    are removed, never followed. Returns the removed paths, the bytes freed and the number
    kept because a live process may still write them.
    """
    if not 0 <= older_than_s <= 10 * 365 * 86_400:
        raise ContractError(f"older_than_s must be within 0..10 years, got {older_than_s}")
    now, locked = time.time(), _locked_inodes()
    removed: list[str] = []
    freed, kept = 0, 0
    for path in _candidates(settings):
        try:
            stats = list(_tree(path))
        except FileNotFoundError:  # another housekeeper or its owner got there first
            continue
        age = now - max(s.st_mtime for s in stats)
        if age < older_than_s:
            continue
        why = _in_use(path, stats, locked)
        if why:
            kept += 1
            log.info("housekeeping: keeping %s (%s)", path, why)
            continue
        if not dry_run:
            try:
                if path.is_symlink() or not path.is_dir():
                    path.unlink()
                else:
                    shutil.rmtree(path)
            except FileNotFoundError:
                continue
        removed.append(str(path))
        freed += sum(s.st_size for s in stats if stat.S_ISREG(s.st_mode))
    log.info(
        "housekeeping: %s %d leftovers (%.1f MB), kept %d in use",
        "would remove" if dry_run else "removed",
        len(removed),
        freed / 1e6,
        kept,
    )
    return {"removed": removed, "bytes": freed, "kept_in_use": kept}
