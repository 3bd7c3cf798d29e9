"""Leave nothing behind when the CLI is killed. In embedded mode Prefect starts a temporary server as a child
process; a SIGKILL of `hci-upgrade` (an operator, a supervisor, a timeout) gives the CLI no chance to stop it, and
the orphan keeps a core busy. A small watcher in its own session notes the CLI's descendants while the CLI lives,
and ends the ones still running once the CLI is gone. Run: python -m flows.reaper <pid>."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_STARTED: set[int] = set()


def start_reaper() -> None:
    """Watch this process: when it dies, however it dies, its descendants are ended. Once per process."""
    if os.getpid() in _STARTED:
        return
    _STARTED.add(os.getpid())
    subprocess.Popen([sys.executable, "-m", "flows.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=Path(__file__).resolve().parent.parent)


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), fields[19]) if fields[0] not in "ZX" else None


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of `root`: pid -> start time (to tell a reused pid from the process we saw)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = stat
    found: dict[int, str] = {}
    frontier = {root}
    while frontier:
        children = {pid for pid, (ppid, _) in parents.items() if ppid in frontier and pid not in found}
        found.update({pid: parents[pid][1] for pid in children})
        frontier = children
    return found


def watch(pid: int, poll: float = 0.5) -> None:
    seen: dict[int, str] = {}
    root = _stat(pid)
    while root is not None and (now := _stat(pid)) is not None and now[1] == root[1]:  # the same process lives
        seen.update(descendants(pid))
        time.sleep(poll)
    seen.pop(os.getpid(), None)  # the watcher is the CLI's child too
    alive = {p for p, started in seen.items() if (stat := _stat(p)) is not None and stat[1] == started}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in alive:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_stat(p) for p in alive):
            time.sleep(0.1)
        alive = {p for p in alive if _stat(p) is not None}
        if not alive:
            return


if __name__ == "__main__":
    watch(int(sys.argv[1]))
