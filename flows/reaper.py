"""Leave nothing behind when the CLI is killed. In embedded mode Prefect starts a temporary server as a child
process; a SIGKILL of `hci-upgrade` (an operator, a supervisor, a timeout) gives the CLI no chance to stop it, and
the orphan keeps a core busy. A small watcher in its own session notes the CLI's descendants while the CLI lives,
and ends the ones still running once the CLI is gone. Run: python -m flows.reaper <pid>."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

_STARTED: set[int] = set()


def start_reaper() -> None:
    """Watch this process: when it dies, however it dies, its descendants are ended. Once per process."""
    if os.getpid() in _STARTED:
        return
    _STARTED.add(os.getpid())
    subprocess.Popen([sys.executable, "-m", "flows.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=Path(__file__).resolve().parent.parent)


def _started(pid: int) -> float | None:
    """When a live process started (to tell a reused pid from the process we saw), or None."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def descendants(root: int) -> dict[int, float]:
    """Every live descendant of `root`: pid -> start time."""
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return {}
    found = {}
    for child in children:
        with contextlib.suppress(psutil.Error):
            found[child.pid] = child.create_time()
    return found


def watch(pid: int, poll: float = 0.5) -> None:
    seen: dict[int, float] = {}
    root = _started(pid)
    while root is not None and _started(pid) == root:  # the same process lives
        seen.update(descendants(pid))
        time.sleep(poll)
    seen.pop(os.getpid(), None)  # the watcher is the CLI's child too
    alive = [psutil.Process(p) for p, started in seen.items() if _started(p) == started]
    for end in (psutil.Process.terminate, psutil.Process.kill):  # SIGTERM, then SIGKILL (TerminateProcess)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                end(process)
        _, alive = psutil.wait_procs(alive, timeout=5)
        if not alive:
            return


if __name__ == "__main__":
    watch(int(sys.argv[1]))
