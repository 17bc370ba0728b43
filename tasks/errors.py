"""Faults of the machine, not of the data or the code: one clear line instead of a traceback.

A full disk, a quota, a read-only mount or a file-size limit reach nightrec in many
shapes: an ``OSError`` with an errno, a ``duckdb.IOException`` whose text ends in
``No space left on device``, a Polars ``ComputeError`` with ``(os error 28)``, an ONNX
Runtime failure, or an error raised while handling one (a failed ``rollback`` after
DuckDB already aborted the transaction). ``describe`` walks the exception chain and
names the fault, so the CLI (exit code 3) and the DAG wrapper can report it in one
line and tell it from a bug. Retrying does not help until someone frees the resource.
"""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

ENVIRONMENT_EXIT = 3  # the CLI's exit code for these faults (2: bad input, 1: a bug)

_HOME = "NIGHTREC_HOME / NIGHTREC_MODELS_DIR"
_KINDS: dict[int, tuple[str, str]] = {  # errno: (what, what to do)
    errno.ENOSPC: ("disk full (No space left on device)", f"free space or move {_HOME}"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EFBIG: ("file size limit reached (File too large)", "raise `ulimit -f` (RLIMIT_FSIZE)"),
    errno.EROFS: ("read-only file system", f"point {_HOME} at a writable folder"),
    errno.EACCES: ("permission denied", f"check the owner and mode of {_HOME}"),
    errno.EPERM: ("operation not permitted", f"check the owner and mode of {_HOME}"),
}
_MEMORY = ("out of memory", "lower NIGHTREC_DUCKDB_MEMORY or the batch sizes")
# numpy's tofile (np.save into a file) reports a failed fwrite without its errno
_SHORT = ("a write was cut short (disk full or a file size limit)", f"free space under {_HOME}")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# the same faults as libraries spell them (strerror texts; Rust's "(os error N)")
_TEXTS = [
    (re.compile(r"No space left on device|os error 28\b|ENOSPC", re.I), errno.ENOSPC),
    (re.compile(r"Disk quota exceeded|os error 122\b|EDQUOT", re.I), errno.EDQUOT),
    (re.compile(r"File too large|os error 27\b|EFBIG", re.I), errno.EFBIG),
    (re.compile(r"Read-only file system|os error 30\b|EROFS", re.I), errno.EROFS),
    (re.compile(r"Permission denied|os error 13\b", re.I), errno.EACCES),
]
_OOM = re.compile(r"Out of Memory Error|failed to allocate|std::bad_alloc", re.I)
_QUOTED_PATH = re.compile(r"[\"'](/[^\"'\\]+)")  # DuckDB quotes the file (JSON-escaped)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def classify(exc: BaseException) -> tuple[int | str, str | None] | None:
    """(errno, ``"memory"`` or ``"short"``; the file if known) of a fault, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _KINDS:
            return e.errno, e.filename if isinstance(e.filename, str) else None
        if isinstance(e, MemoryError):
            return "memory", None
        text = str(e)
        for pattern, code in _TEXTS:
            if pattern.search(text):
                m = _QUOTED_PATH.search(text)
                return code, m.group(1) if m else None
        if _OOM.search(text):
            return "memory", None
        if isinstance(e, OSError) and _SHORT_WRITE.search(text):
            return "short", None
    return None


def describe(exc: BaseException) -> str | None:
    """One line naming the environment fault behind ``exc`` and what to do, or None.

    None means it is not such a fault (bad input or a bug): let it propagate.
    """
    found = classify(exc)
    if found is None:
        return None
    code, path = found
    what, todo = {"memory": _MEMORY, "short": _SHORT}.get(str(code)) or _KINDS[int(code)]
    where = f" writing {path}" if path else ""
    return f"{what}{where}: {todo}, then re-run (finished steps are kept)"


def rollback_quietly(con: Any) -> None:
    """Roll back after a failed statement without hiding why it failed.

    After an I/O error (disk full) DuckDB may already have aborted the transaction or
    invalidated the database; ``rollback`` then raises ``cannot rollback - no transaction
    is active``, which would replace the original error. Call inside ``except``, then
    ``raise``: the original error propagates, the rollback's own failure is only logged.
    """
    try:
        con.execute("rollback")
    except Exception as exc:  # noqa: BLE001 - any failure here is secondary
        log.warning("rollback after a failed statement also failed: %s", exc)
