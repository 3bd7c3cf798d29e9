"""What the CLI draws: the live per-node view of a run, the per-node summary of a finished one, and every table
the commands print (solution steps, post-OS checks, builds, data frames)."""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from hciupgrade.records import PHASES, cau_summary, load_events, node_summary
from hciupgrade.records.store import open_store
from hciupgrade.upgrade.runbook import LABELS


class LiveView:
    """Follows a run's records and draws one row per node: its current phase and how long it took."""

    def __init__(self, run_id: str, console: Console) -> None:
        self.run_id = run_id
        self.console = console
        self.nodes: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._last = 0
        self.unavailable: str | None = None  # why the records cannot be read just now (the view goes on)

    def _read(self) -> None:
        try:
            events = open_store().events(run_ids=[self.run_id], after_id=self._last)
            self.unavailable = None
        except Exception as e:  # noqa: BLE001 - a store that dropped: the view waits for it, the run goes on
            self.unavailable = str(e)
            return
        for event in events:
            self._last = event["_id"]
            if event.get("phase") == "plan":
                for n in event.get("order", []):
                    self.nodes.setdefault(n, {"phase": "waiting", "status": "", "done": 0})
            elif event.get("node"):
                row = self.nodes.setdefault(event["node"], {"phase": "", "status": "", "done": 0})
                if event["phase"] == "node":
                    row["result"] = event["status"]
                else:
                    row["phase"], row["status"] = event["phase"], event["status"]
                    if event["status"] == "succeeded" and event["phase"] in PHASES:
                        row["done"] += 1


    def render(self) -> Table:
        caption = f"records unavailable, the run goes on: {self.unavailable}" if self.unavailable else None
        table = Table(title="Rolling upgrade", expand=False, caption=caption)
        for column in ("node", "phase", "progress", "result"):
            table.add_column(column)
        for name, row in self.nodes.items():
            done = len(PHASES) if row.get("result") in ("succeeded", "skipped") else min(row["done"], len(PHASES))
            bar = "█" * done + "·" * (len(PHASES) - done)
            style = {"failed": "red", "running": "yellow"}.get(row.get("status", ""), "")
            table.add_row(name, f"[{style}]{row['phase']} {row['status']}[/]" if style else row["phase"], bar,
                          row.get("result", ""))
        return table

    def run(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=8, transient=False) as live:
            while not self._stop.wait(0.1):
                self._read()
                live.update(self.render())
            self._read()
            live.update(self.render())
        self.console.print()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> None:
        self._stop.set()
        thread.join(timeout=2)


def make_console(stderr: bool = False) -> Console:
    """A console; output that is not a terminal (a pipe, a file, CI) gets room for the wide tables."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=180)


SHORT = {"build_before": "before", "build_after": "after", **LABELS}


def node_table(df: pd.DataFrame, title: str) -> Table:
    """The per-node table of a run, as the demo, `upgrade` and `report` print it: the same columns everywhere."""
    df = df.drop(columns=["error"], errors="ignore").copy()
    for column in ("build_before", "build_after"):
        df[column] = df[column].map(lambda b: b.removeprefix("10.0.") if isinstance(b, str) else b)
    for column in ("start", "end"):
        df[column] = df[column].map(lambda t: "" if pd.isna(t) else f"{t:%H:%M:%S}")
    df["attempts"] = df["attempts"].map(lambda a: "" if pd.isna(a) else str(int(a)))
    df = df.rename(columns=SHORT)
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in df.columns:
        phase = column in PHASES or column in LABELS.values()
        table.add_column(str(column), justify="right" if phase else "left", no_wrap=not phase)
    for _, row in df.iterrows():
        table.add_row(*["" if (v is None or v != v) else (f"{v:.1f}" if isinstance(v, float) else str(v))
                        for v in row.tolist()])
    return table


def summary_table(run_id: str) -> Table | Group:
    events = load_events(run_ids=[run_id])
    ours = node_table(node_summary(events, run_id),
                      "Per node: builds, result, start and end (UTC), minutes of cluster time per phase")
    cau = cau_summary(events, run_id)
    return Group(ours, frame_table(cau, "Cluster-Aware Updating's report (Get-CauReport)")) if not cau.empty else ours


def print_solution(result: dict, console: Console) -> None:
    import pandas as pd

    if result.get("prerequisites"):
        console.print(frame_table(pd.DataFrame(result["prerequisites"]), "Solution-upgrade prerequisites"))
    for key, title in (("validation", "Validation steps"), ("deployment", "Deployment steps")):
        if result.get(key):
            df = pd.DataFrame(result[key])[["step", "status", "start", "end", "error"]].fillna("")
            df["start"], df["end"] = df["start"].str[11:19], df["end"].str[11:19]
            console.print(frame_table(df, title))
    if result.get("error"):
        console.print(f"[red]Solution upgrade:[/] {result['error']}")
    elif result.get("awaiting_approval"):
        console.print("[yellow]Validation passed; the Deploy waits for an approval (--approve --reason).[/]")
    else:
        console.print(f"Solution upgrade: {result.get('stage')}")


def frame_table(df: Any, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in df.columns:
        table.add_column(str(column))
    for row in df.astype(str).itertuples(index=False):
        table.add_row(*row)
    return table


def print_finish(result: dict, console: Console) -> None:
    from hciupgrade.upgrade.postos import Levels, levels_table, validation_summary

    post = result.get("post_upgrade") or result
    before = Levels(**post["before"]) if post.get("before") else None
    after = Levels(**post["after"]) if post.get("after") else None
    console.print(frame_table(levels_table(before, after), "Before and after"))
    if post.get("validation"):
        console.print(frame_table(validation_summary(post["validation"]), "Test-Cluster"))
    for finding in post.get("findings", []):
        if not finding["ok"]:
            console.print(f"[yellow]{finding['check']}[/]: {finding['detail']}")
    if post.get("awaiting_approval"):
        console.print(f"[yellow]Awaiting approval:[/] {', '.join(post['awaiting_approval'])}: run again with "
                      "--approve --reason TEXT (with PREFECT_API_URL set, the run waits for the Prefect UI's form)")


def builds_frame(result: dict) -> Any:
    import pandas as pd

    return pd.DataFrame([{"node": n, "before": b, "after": result["builds_after"].get(n, "")}
                         for n, b in result["builds_before"].items()])


def run_outcome(run_id: str) -> dict | None:
    """The outcome a run recorded at its end (None if it has not ended): this process's when it ran here (the
    record store may not answer), the record's otherwise."""
    from flows.rolling_upgrade import FINISHED
    from hciupgrade.records.store import open_store

    if run_id in FINISHED:
        return FINISHED[run_id][0].model_dump(mode="json")
    ends = [e for e in open_store().events(run_ids=[run_id], phases=["run"]) if "outcome" in e]
    return ends[-1]["outcome"] if ends else None


def print_dry_run(cluster: str, pre: Any, outcome: Any, console: Console) -> None:
    """A dry run's preflight findings, scan and plan."""
    findings = Table(title=f"Preflight of {cluster}", box=box.SIMPLE_HEAD)
    for column in ("check", "result", "detail"):
        findings.add_column(column)
    for f in pre.findings:
        colour = {"ok": "green", "BLOCKS": "red", "warning": "yellow"}[f.level]
        findings.add_row(f.check, f"[{colour}]{f.level}[/]", f.detail)
    scan = Table(title="Scan: what each node would get", box=box.SIMPLE_HEAD)
    for column in ("node", "build now", "offered by the media", "note"):
        scan.add_column(column)
    for row in pre.scan:
        scan.add_row(row.node, row.current or "", row.offered or "", row.error or "")
    plan = Table(title="Plan (in this order; gates before each drain: other nodes Up, no storage job, "
                       "every virtual disk Healthy, pool Healthy)", box=box.SIMPLE_HEAD)
    for column in ("#", "node", "position", "action", "detail", "steps"):
        plan.add_column(column)
    for i, p in enumerate(pre.plan, 1):
        plan.add_row(str(i), p.node, p.position, p.action, p.detail, " > ".join(p.steps))
    for table in (findings, scan, plan):
        console.print(table)
    console.print("Dry run: nothing was changed." + (f" [red]Blocked:[/] {outcome.error}" if outcome.error else ""))


def print_status(cluster: str, current: Any, console: Console) -> None:
    """`status`: the latest run's state line, its warnings, and each node's latest step."""
    if current is None:
        console.print(f"RunNotInProgress: no run of hci-upgrade on {cluster} is recorded")
        return
    console.print(f"[bold]{current.state}[/]  run {current.run_id}{f' ({current.label})' if current.label else ''}"
                  + (f"  to {current.target}" if current.target else "")
                  + f"  on {current.host or 'unknown host'}  started {current.started:%Y-%m-%d %H:%M:%S} UTC"
                  + (f"  result {current.result}" if current.result else "")
                  + (f"  current node {current.current_node}" if current.current_node else ""))
    if current.awaiting is not None:
        from prefect.settings import get_current_settings

        ui = get_current_settings().ui_url
        where = f"{str(ui).rstrip('/')}/runs/flow-run/{current.awaiting}" if ui and current.awaiting else \
            "hci-upgrade finish --approve --reason '<change>'"
        console.print(f"[yellow]awaiting approval[/]: {where}")
    if current.stalled:
        console.print(f"[red]stalled:[/] {current.stalled}")
    for warning in current.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("node", "step", "status", "at (UTC)"):
        table.add_column(column)
    for _, row in current.nodes.iterrows():
        table.add_row(row["node"], row["phase"], row["status"], f"{row['at']:%H:%M:%S}")
    console.print(table)


def print_fleet(summary: dict, console: Console) -> None:
    """A fleet run's result: each cluster's state, its windows and why it did not end upgraded."""
    table = Table(title="Fleet result", box=box.SIMPLE_HEAD)
    for column in ("cluster", "state", "windows", "reason"):
        table.add_column(column)
    for r in summary["clusters"]:
        table.add_row(r["cluster"], r["state"], str(r["windows"]), r["reason"] or "")
    console.print(table)
    if summary["stopped"]:
        console.print(f"[red]Stopped:[/] {summary['stopped']}")
