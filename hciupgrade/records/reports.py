"""Status and reports from the run records, like Get-CauRun and Get-CauReport: what runs now, and how each node
fared in a run. Each reads one run's events through the store's indexes, however many runs came before."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from hciupgrade.records import load_events, node_summary, run_alive
from hciupgrade.records.store import RecordStore, open_store
from hciupgrade.targets import DEFAULT_RELEASE


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    cluster: str
    host: str | None
    started: pd.Timestamp
    state: str  # RunInProgress, RunNotInProgress (finished), RunStopped (the process died without finishing)
    result: str | None
    label: str  # "dry run", "refused" or ""
    current_node: str | None
    warnings: list[str]
    nodes: pd.DataFrame  # node, phase, status, at
    target: str = ""  # the target release the run's options name (hciupgrade/targets.py)
    awaiting: str | None = None  # the run waits for an approval: its flow run's id ("" if unknown); None if not
    stalled: str | None = None  # the current step has run past its budget (the runbook's timeout): which, how long


def run_status(cluster: str, store: RecordStore | None = None) -> RunStatus | None:
    """The cluster's latest run (dry and refused runs are not taken as the latest unless there is no other)."""
    store = store or open_store()
    run = store.latest_run(cluster)
    if run is None:
        return None
    events = load_events(run_ids=[run["run_id"]], store=store)
    if run["ended"]:
        state, result = "RunNotInProgress", str(run["status"])
    else:
        state, result = ("RunInProgress" if run_alive(run) else "RunStopped"), None
    steps = events[events["node"].notna() & ~events["phase"].isin(["ownership", "stalled"])] if "node" in events \
        else events
    latest = steps.groupby("node").tail(1)
    nodes = pd.DataFrame({"node": latest["node"], "phase": latest["phase"], "status": latest["status"],
                          "at": latest["end"].fillna(latest["start"])}).reset_index(drop=True)
    running = latest[latest["status"] == "running"]
    current = None if running.empty or state != "RunInProgress" else str(running["node"].iloc[-1])
    warnings = list(events.loc[events["phase"] == "warn-after", "error"].dropna()) if "error" in events else []
    return RunStatus(run["run_id"], run["cluster"], run["host"], pd.Timestamp(run["started"]), state, result,
                     run["aside"] or "", current, warnings, nodes, target_of(events),
                     awaiting_approval(events) if not run["ended"] else None,
                     stalled_step(events, current) if state == "RunInProgress" and current else None)


def stalled_step(events: pd.DataFrame, node: str, now: pd.Timestamp | None = None) -> str | None:
    """The node's running step when it has run past its budget (the step's timeout under the run's options, in
    cluster minutes): a run whose heartbeat is alive but whose step does not move. None otherwise."""
    from hciupgrade.models import RunOptions
    from hciupgrade.upgrade.runbook import STEPS, timeout_minutes

    mine = events[(events["node"] == node) & events["phase"].isin(list(STEPS))]
    if mine.empty or mine["status"].iloc[-1] != "running":
        return None
    step, started = str(mine["phase"].iloc[-1]), pd.Timestamp(mine["start"].iloc[-1])
    told = events[(events["node"] == node) & (events["phase"] == "stalled")]
    if not told.empty and pd.Timestamp(told["start"].iloc[-1]) >= started:  # the run said so (the spread rule)
        last = told.iloc[-1]
        return f"{node}: {step} running for {last['minutes']:g} min, {last['why']}"
    factor = float(events["time_factor"].dropna().iloc[0]) if "time_factor" in events and \
        events["time_factor"].notna().any() else 1.0
    recorded = [o for o in events["options"].dropna() if isinstance(o, dict)] if "options" in events else []
    try:
        options = RunOptions.model_validate(recorded[0]) if recorded else RunOptions()
    except ValueError:  # options of another version: the defaults' budgets
        options = RunOptions()
    now = now or pd.Timestamp.now(tz="UTC")
    minutes = (now - (started if started.tzinfo else started.tz_localize("UTC"))).total_seconds() * factor / 60
    budget = timeout_minutes(options, step)
    if minutes <= budget:
        return None
    return f"{node}: {step} running for {minutes:.0f} min, past its budget of {budget:.0f} min"


def awaiting_approval(events: pd.DataFrame) -> str | None:
    """The flow run whose approval is pending ("" when the run has no flow run id); None when none is."""
    if "phase" not in events:
        return None
    asked = events[events["phase"] == "approval"]
    if asked.empty or asked["status"].iloc[-1] != "running":
        return None
    ids = list(events["flow_run_id"].dropna()) if "flow_run_id" in events else []
    return str(ids[-1]) if ids else ""


def target_of(events: pd.DataFrame) -> str:
    """The target release from the options the run recorded when it started."""
    if "options" not in events:
        return ""
    recorded = [o for o in events["options"].dropna() if isinstance(o, dict)]
    return str(recorded[0].get("TargetRelease") or DEFAULT_RELEASE) if recorded else ""


def run_report(run_id: str, store: RecordStore | None = None) -> tuple[dict[str, Any], pd.DataFrame] | None:
    """A run's row (cluster, host, start, end, status, label, target release) and its per-node table; None if
    unknown."""
    store = store or open_store()
    found = store.runs(run_ids=[run_id])
    if not found:
        return None
    events = load_events(run_ids=[run_id], store=store)
    return {**found[0], "target": target_of(events)}, node_summary(events, run_id)


def latest_run_id(cluster: str | None = None, store: RecordStore | None = None) -> str | None:
    run = (store or open_store()).latest_run(cluster)
    return None if run is None else str(run["run_id"])
