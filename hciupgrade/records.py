"""Run records: every run appends events (run, cluster, node, phase, status, start, end, error) to its own JSON
Lines file, flushed and fsynced, so the record outlives the process (Prefect's embedded mode does not keep task
history: reference/prefect.md B3). The demo's table, the status and report commands and the notebook all read
these files."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

PHASES = ("gate", "pre-script", "drain", "install", "reboot", "wait-back", "wait-repair", "resume", "post-script",
          "wait-storage")


def home() -> Path:
    return Path(os.environ.get("HCI_UPGRADE_HOME", Path.home() / ".hci-upgrade"))


def records_dir() -> Path:
    path = home() / "records"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RunRecorder:
    """Appends a run's events. Listeners (the CLI's live display, the flow's progress artifact) see each one."""

    def __init__(self, run_id: str, cluster: str, *, time_factor: float = 1.0, directory: Path | None = None):
        self.run_id = run_id
        self.cluster = cluster
        self.time_factor = time_factor
        self.path = (directory or records_dir()) / f"{run_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, node: str | None, phase: str, status: str, *, start: str | None = None, end: str | None = None,
             error: str | None = None, **attrs: Any) -> dict[str, Any]:
        event = {"run_id": self.run_id, "cluster": self.cluster, "node": node, "phase": phase, "status": status,
                 "start": start or now_iso(), "end": end, "error": error, "time_factor": self.time_factor, **attrs}
        line = json.dumps(event, default=str)
        with self._lock:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        for listener in self.listeners:
            listener(event)
        return event

    @contextmanager
    def phase(self, node: str | None, phase: str, **attrs: Any) -> Iterator[dict[str, Any]]:
        """Record a phase: 'running' when it starts, 'succeeded' or 'failed' (with the error) when it ends."""
        start = now_iso()
        self.emit(node, phase, "running", start=start, **attrs)
        extra: dict[str, Any] = {}
        try:
            yield extra
        except BaseException as e:
            self.emit(node, phase, "failed", start=start, end=now_iso(), error=str(e) or type(e).__name__,
                      **attrs, **extra)
            raise
        self.emit(node, phase, "succeeded", start=start, end=now_iso(), **attrs, **extra)


def load_events(paths: list[Path] | None = None, directory: Path | None = None) -> pd.DataFrame:
    """All events of the given record files (default: every run in the records directory) as one DataFrame."""
    if paths is None:
        paths = sorted((directory or records_dir()).glob("*.jsonl"))
    rows: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for column in ("start", "end"):
        df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    return df


def phase_durations(events: pd.DataFrame) -> pd.DataFrame:
    """One row per finished phase: run, node, phase, status, wall seconds and cluster seconds."""
    done = events[events["status"].isin(["succeeded", "failed"]) & events["phase"].isin(PHASES)].copy()
    done["wall_s"] = (done["end"] - done["start"]).dt.total_seconds()
    done["cluster_s"] = done["wall_s"] * done["time_factor"]
    return done[["run_id", "cluster", "node", "phase", "status", "start", "end", "wall_s", "cluster_s", "error"]]


def node_summary(events: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Per node of one run: builds before and after, cluster minutes in each phase, the result and the error."""
    run = events[events["run_id"] == run_id]
    durations = phase_durations(run)
    table = durations.pivot_table(index="node", columns="phase", values="cluster_s", aggfunc="sum")
    table = (table / 60).reindex(columns=[p for p in PHASES if p in table.columns])
    outcomes = run[run["phase"] == "node"].groupby("node").last()
    result = pd.DataFrame(index=outcomes.index)
    for column in ("build_before", "build_after", "result"):
        result[column] = outcomes.get(column)
    result = result.join(table, how="left")
    result["error"] = outcomes.get("error")  # last: the phases stay in view beside the builds
    return result.reset_index()


def owned_nodes(cluster: str, *, exclude_run: str | None = None, directory: Path | None = None) -> dict[str, str]:
    """Nodes that a run of this tool paused and did not release: node -> the run id of the mark it carries. A
    crashed run's nodes stay owned until a later run resumes them (or finds them Up and releases them)."""
    events = []
    for path in (directory or records_dir()).glob("*.jsonl"):
        if exclude_run and path.stem == exclude_run:
            continue
        with open(path) as fh:
            events += [e for e in map(json.loads, filter(lambda line: '"ownership"' in line, fh))
                       if e.get("phase") == "ownership" and str(e.get("cluster", "")).lower() == cluster.lower()]
    owned: dict[str, str] = {}
    for event in sorted(events, key=lambda e: e["start"]):
        if event["status"] == "paused":  # the run whose mark the node carries (an adopter keeps the first's)
            owned[event["node"]] = event.get("mark") or event["run_id"]
        else:
            owned.pop(event["node"], None)
    return owned


def process_alive(pid: object) -> bool:
    """Whether a process of this machine still lives (a zombie does not count)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:  # type: ignore[arg-type]
            return fh.read().split(") ", 1)[1][0] not in "ZX"
    except (OSError, TypeError, ValueError, IndexError):
        try:
            os.kill(int(pid), 0)  # type: ignore[arg-type]
            return True
        except (OSError, TypeError, ValueError):
            return False


def runs_in_progress(cluster: str, *, exclude_run: str | None = None, directory: Path | None = None) -> list[str]:
    """Runs of this cluster that have not ended and whose process still lives on this machine."""
    import socket

    alive = []
    for path in (directory or records_dir()).glob("*.jsonl"):
        if path.stem == exclude_run:
            continue
        with open(path) as fh:
            events = [json.loads(line) for line in fh if '"phase": "run"' in line]
        if not events or str(events[0].get("cluster", "")).lower() != cluster.lower():
            continue
        start, ended = events[0], any(e["status"] != "running" for e in events)
        if not ended and start.get("host", socket.gethostname()) == socket.gethostname() \
                and start.get("pid") != os.getpid() and process_alive(start.get("pid")):
            alive.append(path.stem)
    return sorted(alive)
