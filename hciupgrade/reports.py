"""Status and reports from the run records, like Get-CauRun and Get-CauReport: what runs now, and how each node
fared in a run."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from hciupgrade.records import PHASES, load_events, phase_durations, process_alive


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    cluster: str
    started: pd.Timestamp
    state: str  # RunInProgress, RunNotInProgress (finished), RunStopped (the process died without finishing)
    result: str | None
    current_node: str | None
    nodes: pd.DataFrame  # node, phase, status, at


def aside_runs(runs: pd.DataFrame) -> set[str]:
    """Runs that are not "the latest run" of a cluster: dry runs, and runs refused before they touched anything
    (preflight blocked, a run already in progress). Their own records still show them, labelled."""
    aside = set()
    for column in ("dry_run", "refused"):
        if column in runs:
            aside |= set(runs.loc[runs[column].fillna(False).astype(bool), "run_id"])
    return aside


def latest_run(events: pd.DataFrame, cluster: str | None = None) -> str | None:
    runs = events[events["phase"] == "run"]
    if cluster is not None:
        runs = runs[runs["cluster"].str.lower() == cluster.lower()]
    real = runs[~runs["run_id"].isin(aside_runs(runs))]
    runs = real if not real.empty else runs
    return None if runs.empty else str(runs.sort_values("start")["run_id"].iloc[-1])


def label(events: pd.DataFrame, run_id: str) -> str:
    """"dry run", "refused" or "" for a run, from its records."""
    runs = events[(events["phase"] == "run") & (events["run_id"] == run_id)]
    if "dry_run" in runs and runs["dry_run"].fillna(False).astype(bool).any():
        return "dry run"
    if "refused" in runs and runs["refused"].fillna(False).astype(bool).any():
        return "refused"
    return ""


def run_status(events: pd.DataFrame, cluster: str) -> RunStatus | None:
    run_id = latest_run(events, cluster)
    if run_id is None:
        return None
    run = events[events["run_id"] == run_id].sort_values("start", kind="stable")
    header = run[run["phase"] == "run"]
    final = header[header["status"] != "running"]
    if not final.empty:
        state, result = "RunNotInProgress", str(final["status"].iloc[-1])
    else:
        pid = header["pid"].iloc[0] if "pid" in header else None
        state, result = ("RunInProgress" if process_alive(pid) else "RunStopped"), None
    steps = run[run["node"].notna() & (run["phase"] != "ownership")]
    latest = steps.groupby("node").tail(1)
    nodes = pd.DataFrame({"node": latest["node"], "phase": latest["phase"], "status": latest["status"],
                          "at": latest["end"].fillna(latest["start"])}).reset_index(drop=True)
    running = latest[latest["status"] == "running"]
    current = None if running.empty or state != "RunInProgress" else str(running["node"].iloc[-1])
    return RunStatus(run_id, str(header["cluster"].iloc[0]), header["start"].iloc[0], state, result, current, nodes)


def run_report(events: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """Per node: result, attempts, retries, error, and minutes of cluster time in each phase."""
    run = events[events["run_id"] == run_id]
    outcome_rows = run[(run["phase"] == "node") & (run["status"] != "running")].groupby("node").tail(1)
    report = pd.DataFrame({"node": outcome_rows["node"],
                           "result": outcome_rows.get("result"),
                           "attempts": outcome_rows.get("attempts"),
                           "error": outcome_rows.get("error")}).set_index("node")
    report["retries"] = (report["attempts"].fillna(1).astype(int) - 1).clip(lower=0)
    durations = phase_durations(run)
    if not durations.empty:
        minutes = durations.pivot_table(index="node", columns="phase", values="cluster_s", aggfunc="sum") / 60
        report = report.join(minutes.reindex(columns=[p for p in PHASES if p in minutes.columns]), how="left")
    return report.reset_index()


def all_events() -> pd.DataFrame:
    return load_events()
