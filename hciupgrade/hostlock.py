"""A per-cluster lock between processes on one machine: in Prefect's embedded mode every process starts its own
temporary server, so its concurrency limits do not see each other. filelock gives the operating system's lock on
both hosts an operator uses (flock on Linux, LockFileEx on the Windows admin host); either is dropped when the
holder dies, even on SIGKILL or TerminateProcess."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from hciupgrade.records.store import home


class LockTimeout(TimeoutError):
    pass


@contextmanager
def host_lock(cluster: str, *, timeout: float, poll: float = 0.05) -> Iterator[None]:
    directory = home() / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory / f"{cluster.lower()}.lock", timeout=timeout, poll_interval=poll, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeout(f"cluster {cluster} is locked by another run on this machine") from None
    try:
        (directory / f"{cluster.lower()}.owner").write_text(f"{os.getpid()}\n")  # for an operator who looks
        yield
    finally:
        lock.release()
