"""A per-cluster lock between processes on one machine (flock): in Prefect's embedded mode every process starts
its own temporary server, so its concurrency limits do not see each other. The kernel drops the lock when the
holder dies, even on SIGKILL."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hciupgrade.store import home


class LockTimeout(TimeoutError):
    pass


@contextmanager
def host_lock(cluster: str, *, timeout: float, poll: float = 0.05) -> Iterator[None]:
    directory = home() / "locks"
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{cluster.lower()}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"cluster {cluster} is locked by another run on this machine") from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock
