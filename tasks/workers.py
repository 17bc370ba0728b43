"""Independent jobs on the machine's cores: spawned processes that split the torch threads
among them and send their log records to this process's handlers.

On a 2-core host a training step of the encoder gains little from a second torch thread
(Beauty: 46 ms a step on 2 threads, 60 on 1), while two 1-thread fits side by side each
keep most of their speed: evaluate's four fits and train's refit run as processes.

``NIGHTREC_WORKERS``: at most this many processes (default: one per CPU this process may
use; 1: everything in this process, as before). A job's result does not depend on which
process ran it, except through the torch thread count (float sums in another order).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from nightrec.config import ContractError

log = logging.getLogger(__name__)


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available(jobs: int) -> int:
    """Processes to run ``jobs`` independent jobs in: 1 means in this process."""
    raw = os.environ.get("NIGHTREC_WORKERS", "").strip()
    if raw:
        try:
            limit = int(raw)
        except ValueError:
            raise ContractError(f"NIGHTREC_WORKERS must be a whole number, got {raw!r}") from None
        if limit < 1:
            raise ContractError(f"NIGHTREC_WORKERS must be >= 1, got {raw!r}")
    else:
        limit = cpus()
    if mp.current_process().daemon:  # a daemonic process may not start children
        return 1
    return max(1, min(limit, jobs))


def threads_each(workers: int) -> int:
    """torch threads for each of ``workers`` processes sharing this host's CPUs."""
    return max(1, cpus() // max(workers, 1))


class _Forward(logging.Handler):
    """Hands a worker's record to the logger of the same name here (its handlers, its level)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            record.msg = f"[{record.processName}] {record.msg}"
            target.handle(record)


def setup(queue, threads: int, level: int) -> None:
    """In a spawned worker: ``threads`` torch threads, records at ``level`` and above to
    ``queue`` (the parent's ``listener``)."""
    import torch

    torch.set_num_threads(threads)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(logging.WARNING)
    logging.getLogger("nightrec").setLevel(level)


def listener(ctx) -> tuple[Any, logging.handlers.QueueListener]:
    """(queue, started listener) that replays workers' records here."""
    queue = ctx.Queue()
    listen = logging.handlers.QueueListener(queue, _Forward())
    listen.start()
    return queue, listen


def level() -> int:
    """The lowest level workers send: INFO, or DEBUG where nightrec logs it here (each record
    is then filtered by the level of its own logger here)."""
    return min(logging.INFO, logging.getLogger("nightrec").getEffectiveLevel())


def run(jobs: Sequence[tuple[Callable[..., Any], tuple]], workers: int) -> list[Any]:
    """``fn(*args)`` of every job, in job order; at most ``workers`` processes (1: here).

    A job's exception is raised here when its turn comes (job order): jobs not started yet
    are cancelled, running ones finish first. Functions and arguments must pickle
    (module-level functions, plain data).
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*args) for fn, args in jobs]
    ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and locks
    queue, listen = listener(ctx)
    threads = threads_each(workers)
    log.info("%d jobs in %d processes of %d torch threads", len(jobs), workers, threads)
    try:
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=setup, initargs=(queue, threads, level())
        ) as pool:
            futures = [pool.submit(fn, *args) for fn, args in jobs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        listen.stop()
