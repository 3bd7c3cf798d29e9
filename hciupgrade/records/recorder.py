"""Run records: every run appends events (run, cluster, node, phase, status, start, end, error) to the record store
(hciupgrade/records/store.py: SQLite on this machine, PostgreSQL shared by every worker), each committed before the run
goes on, so the record outlives the process (Prefect's embedded mode does not keep task history:
reference/prefect.md B3). The demo's table, the status and report commands, the start of every run and the
notebook read them, by run and by cluster."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from hciupgrade.records.store import (
    RecordStore,
    StoreUnavailable,
    heartbeat_seconds,
    home,
    host_id,
    now_iso,
    open_store,
    process_alive,
)
from hciupgrade.upgrade import runbook

__all__ = ["PHASES", "RunRecorder", "cau_summary", "home", "load_events", "new_run_id", "node_summary", "now_iso",
           "owned_nodes", "phase_durations", "runs_in_progress"]

PHASES = runbook.PHASES  # a node's steps, in order (hciupgrade/upgrade/runbook.py)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class _Heartbeat:
    """One thread per process beats for the runs open in it, so that a run on another machine can tell a long
    step (hours of setup, no event) from a dead process."""

    def __init__(self) -> None:
        self.runs: dict[str, RecordStore] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()  # a new run is beaten for at once, at the interval set now

    def open(self, run_id: str, store: RecordStore) -> None:
        with self.lock:
            self.runs[run_id] = store
            self.wake.set()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="hci-upgrade-heartbeat", daemon=True)
                self.thread.start()

    def close(self, run_id: str) -> None:
        with self.lock:
            self.runs.pop(run_id, None)

    def _beat(self) -> None:
        while True:
            self.wake.wait(heartbeat_seconds())
            self.wake.clear()
            with self.lock:
                by_store: dict[int, tuple[RecordStore, list[str]]] = {}
                for run_id, store in self.runs.items():
                    by_store.setdefault(id(store), (store, []))[1].append(run_id)
            for store, run_ids in by_store.values():
                try:
                    store.beat(run_ids)
                except Exception:  # noqa: BLE001 - a missed beat is retried; the run must not stop for it
                    pass


_heartbeat = _Heartbeat()


class RunRecorder:
    """Appends a run's events. Listeners (the CLI's live display, the flow's progress artifact, the run log in
    Prefect) see each one."""

    def __init__(self, run_id: str, cluster: str, *, time_factor: float = 1.0, store: RecordStore | None = None):
        self.run_id = run_id
        self.cluster = cluster
        self.time_factor = time_factor
        self.store = store or open_store()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.emitted: list[dict[str, Any]] = []  # this process's events of the run, for a store that dropped
        self.run_attrs: dict[str, Any] = {}  # what the run's first event carries besides (its Prefect flow run)

    def emit(self, node: str | None, phase: str, status: str, *, start: str | None = None, end: str | None = None,
             error: str | None = None, **attrs: Any) -> dict[str, Any]:
        if phase == "run" and status == "running":
            attrs = {**self.run_attrs, **attrs}
        event = {"run_id": self.run_id, "cluster": self.cluster, "node": node, "phase": phase, "status": status,
                 "start": start or now_iso(), "end": end, "error": error, "time_factor": self.time_factor, **attrs}
        event = json.loads(json.dumps(event, default=str))  # what the store keeps is what listeners see
        self.store.append(event, host=host_id(), pid=os.getpid())  # or its spool, when the store does not answer
        self.emitted.append(event)
        if phase == "run":
            if status == "running":
                _heartbeat.open(self.run_id, self.store)
            else:
                _heartbeat.close(self.run_id)
        for listener in self.listeners:
            listener(event)
        return event

    def events(self) -> pd.DataFrame:
        """This run's events so far (those of this process alone while the store does not answer)."""
        try:
            if self.store.flush_spool(force=True):
                return load_events(run_ids=[self.run_id], store=self.store)
        except StoreUnavailable:
            pass
        return frame([dict(e, _id=i) for i, e in enumerate(self.emitted)])

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


def frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(events)
    if df.empty:
        return df
    for column in ("start", "end"):
        df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    return df.drop(columns=["_id"], errors="ignore")


def load_events(*, run_ids: Sequence[str] | None = None, cluster: str | None = None,
                since: datetime | str | None = None, until: datetime | str | None = None,
                store: RecordStore | None = None) -> pd.DataFrame:
    """Events as one DataFrame, selected by run, by cluster and by start time (all of them without a selection:
    after years of runs, select)."""
    return frame((store or open_store()).events(run_ids=run_ids, cluster=cluster, since=since, until=until))


def phase_durations(events: pd.DataFrame) -> pd.DataFrame:
    """One row per finished phase: run, node, phase, status, wall seconds and cluster seconds."""
    done = events[events["status"].isin(["succeeded", "failed"]) & events["phase"].isin(PHASES)].copy()
    done["wall_s"] = (done["end"] - done["start"]).dt.total_seconds()
    done["cluster_s"] = done["wall_s"] * done["time_factor"]
    return done[["run_id", "cluster", "node", "phase", "status", "start", "end", "wall_s", "cluster_s", "error"]]


def node_summary(events: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Per node of one run: builds before and after, the result, attempts, when its work started and ended,
    cluster minutes in each phase, and the error (last: the phases stay in view beside the builds)."""
    run = events[events["run_id"] == run_id]
    nodes = run[run["phase"] == "node"]
    if nodes.empty:
        return pd.DataFrame(columns=["node", "build_before", "build_after", "result", "attempts", "start", "end",
                                     "error"])
    outcomes = nodes.groupby("node", sort=False).last()
    result = pd.DataFrame(index=outcomes.index)
    for column in ("build_before", "build_after", "result", "attempts"):
        result[column] = outcomes.get(column)
    durations = phase_durations(run)
    result["start"] = nodes.groupby("node")["start"].min()
    finals = nodes[nodes["status"] != "running"]
    result["end"] = finals["end"].fillna(finals["start"]).groupby(finals["node"]).max()  # its last word
    if not durations.empty:
        table = durations.pivot_table(index="node", columns="phase", values="cluster_s", aggfunc="sum") / 60
        result = result.join(table.reindex(columns=[p for p in PHASES if p in table.columns]), how="left")
    result["error"] = outcomes.get("error")
    return result.reset_index()


def cau_summary(events: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Engine cau: Get-CauReport's nodes as the run recorded them (node, CAU's status, its updates, its error);
    empty for a run of hci-upgrade's own engine."""
    run = events[(events["run_id"] == run_id) & (events["phase"] == "cau-report")] if "phase" in events else events
    if run.empty or "rows" not in run:
        return pd.DataFrame(columns=["node", "cau_status", "updates", "cau_error"])
    return pd.DataFrame(run.iloc[-1]["rows"])


def owned_nodes(cluster: str, *, store: RecordStore | None = None) -> dict[str, str]:
    """Nodes that a run of this tool paused and did not release: node -> the run id of the mark it carries. A
    crashed run's nodes stay owned until a later run resumes them (or finds them Up and releases them), whichever
    machine it ran on."""
    events = (store or open_store()).events(cluster=cluster, phases=["ownership"])
    owned: dict[str, str] = {}
    for event in sorted(events, key=lambda e: (e["start"], e["_id"])):
        if event["status"] == "paused":  # the run whose mark the node carries (an adopter keeps the first's)
            owned[event["node"]] = event.get("mark") or event["run_id"]
        else:
            owned.pop(event["node"], None)
    return owned


def run_alive(run: dict[str, Any]) -> bool:
    """Whether a run that has not ended still lives: on this machine its process does; on another machine its
    heartbeat is fresh (within four beats: the machines' clocks must agree within a beat, 30 s by default)."""
    if run.get("ended"):
        return False
    if run.get("host") in (None, host_id()):
        return run.get("pid") != os.getpid() and process_alive(run.get("pid"))
    stale = datetime.now(UTC) - timedelta(seconds=4 * heartbeat_seconds())
    return datetime.fromisoformat(run["heartbeat"]) > stale


def runs_in_progress(cluster: str, *, exclude_run: str | None = None, store: RecordStore | None = None,
                     settle: bool = False) -> list[dict[str, Any]]:
    """Runs of this cluster that have not ended and still live, on this machine or another (run rows).

    A run on another machine that was killed looks alive until its heartbeat goes stale. With `settle`, such a
    run is watched until it shows which it is: a new beat (alive), an end, or four missed beats (dead); that takes
    at most one beat for a live run."""
    store = store or open_store()
    alive = [r for r in store.runs(cluster=cluster, open_only=True) if r["run_id"] != exclude_run and run_alive(r)]
    if not settle:
        return alive
    decided = [r for r in alive if r["host"] in (None, host_id())]
    watching = {r["run_id"]: r for r in alive if r["host"] not in (None, host_id())}
    while watching:
        time.sleep(min(1.0, heartbeat_seconds() / 4))
        for row in store.runs(run_ids=list(watching)):
            first = watching[row["run_id"]]
            if row["heartbeat"] != first["heartbeat"] and not row["ended"]:
                decided.append(row)
            elif row["ended"] or not run_alive(row):
                pass
            else:
                continue
            del watching[row["run_id"]]
    return decided
