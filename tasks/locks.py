"""Advisory file locks: one writer at a time for pointers and whole runs, across processes."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from nightrec.config import ContractError

log = logging.getLogger(__name__)


class Locked(ContractError):
    """Another nightrec process holds the lock (and ``wait_s`` ran out)."""


@contextlib.contextmanager
def file_lock(path: Path, wait_s: float = 600.0, what: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; wait up to ``wait_s`` for another holder.

    The holder's pid is written into the file so a waiter can name it. The lock dies
    with its process (a killed run never leaves it behind).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        warned = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline:
                    raise Locked(
                        f"{what or path} is held by another nightrec process (pid {holder}) "
                        f"for more than {wait_s:.0f}s; try again when it has finished"
                    ) from None
                if not warned:
                    log.warning("%s is held by pid %s; waiting", what or path, holder)
                    warned = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
