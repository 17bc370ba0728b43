"""Landing files: which ones ingest may read, and opening them safely.

``landing_files`` lists ``landing/{items,users,events}/`` by name and refuses, with a
WARNING each, what must not be read: links that lead out of the landing folder (a link
whose target lies inside the landing folder is followed: the target is read, recorded
under the link's name), FIFOs, devices, sockets and folders, names that are not UTF-8,
and unknown extensions. Hidden names (``.x``) and files still being written (``*.tmp``,
``*.part``, ...) are skipped at INFO. ``open_regular`` opens a file only if it is a
regular file reached without a link; ``checksum`` also notes the file's identity (device,
inode, size, mtime), and ingest gives up on a file whose identity changed while it was
being read (still being written, or swapped): it is tried again on the next run.

Hard links are not links: a hard link in landing to a file elsewhere is an ordinary file
and is read. Keep the landing folder on its own file system if that matters.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from nightrec.config import ContractError

log = logging.getLogger(__name__)

KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required columns, optional columns)
    "items": (
        ("item_id", "title"),
        ("description", "category", "brand", "tags", "active", "updated_at"),
    ),
    "users": (("user_id",), ("created_at",)),
    "events": (("user_id", "item_id", "event_type", "ts"), ("event_id", "value")),
}
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
IN_PROGRESS = (".tmp", ".part", ".partial", ".inprogress", ".crdownload", ".filepart")


class FileRejected(Exception):
    """The file as a whole breaks the contract (it cannot be read row by row, ...)."""


class TryAgain(Exception):
    """The file cannot be taken now for a reason that may pass (it changed while read)."""


def show(path: Path | str) -> str:
    """A path fit for one log line: names with control characters are written escaped."""
    s = str(path)
    return s if s.isprintable() else ascii(s)


# ---------------------------------------------------------------- discovery


@dataclass
class Candidate:
    kind: str
    path: Path  # as listed in the landing folder (recorded as source_file)
    real: Path  # what is read: the link's target inside landing, or path itself
    fmt: str


@dataclass
class Discovery:
    files: list[Candidate] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def landing_files(landing: Path) -> Discovery:
    """Every landing file ingest may read, in load order (kinds in order, files by name)."""
    root = landing.resolve()
    if not root.is_dir():
        raise ContractError(f"landing folder {landing} does not exist")
    found = Discovery()

    def refuse(path: Path, why: str) -> None:
        log.warning("ingest: refused %s: %s", show(path), why)
        found.refused.append((show(path), why))

    for kind in KINDS:
        folder = root / kind
        if not folder.exists() and not folder.is_symlink():
            continue
        if folder.is_symlink() or not folder.is_dir():
            refuse(folder, "not a folder inside the landing folder")
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = folder / entry.name
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                refuse(path, "the name is not valid UTF-8")
                continue
            if entry.name.startswith("."):
                log.info("ingest: skipped %s: hidden file", show(path))
                continue
            if entry.name.lower().endswith(IN_PROGRESS):
                log.info("ingest: skipped %s: still being written", show(path))
                continue
            fmt = SUFFIXES.get(path.suffix.lower())
            real = path
            if entry.is_symlink():
                real = Path(os.path.realpath(path))
                if not real.is_relative_to(root):
                    refuse(path, "a link that leads out of the landing folder")
                    continue
            try:
                mode = os.stat(real, follow_symlinks=False).st_mode
            except OSError as exc:
                refuse(path, f"cannot be examined ({exc.strerror}); a broken link?")
                continue
            if stat.S_ISDIR(mode) and fmt is None:
                log.info("ingest: skipped %s: a folder (ingest does not descend)", show(path))
            elif not stat.S_ISREG(mode):
                refuse(path, "not a regular file (a folder, FIFO, device or socket)")
            elif fmt is None:
                refuse(path, f"unknown extension (expected one of {', '.join(SUFFIXES)})")
            else:
                if real != path:
                    log.info("ingest: %s is a link to %s inside landing", show(path), show(real))
                found.files.append(Candidate(kind, path, real, fmt))
    return found


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for reading only if it is a regular file reached without a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileRejected("not a regular file")
        fh = os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


Identity = tuple[int, int, int, int]  # device, inode, size, mtime (ns)


def identity(path: Path) -> Identity:
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def checksum(path: Path) -> tuple[str, Identity]:
    """(sha256 of the file's bytes, the file's identity while it was hashed)."""
    h = hashlib.sha256()
    with open_regular(path) as fh:
        st = os.fstat(fh.fileno())
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest(), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
