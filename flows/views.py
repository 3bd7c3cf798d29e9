"""What the CLI draws: the live per-node view of a run, and the per-node summary table of a finished one."""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hciupgrade.records import PHASES, load_events, node_summary
from hciupgrade.store import open_store


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


SHORT = {"build_before": "before", "build_after": "after", "wait-back": "back", "wait-repair": "repair?",
         "wait-storage": "resync"}


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
        phase = column in PHASES or column in ("back", "repair?", "resync")
        table.add_column(str(column), justify="right" if phase else "left", no_wrap=not phase)
    for _, row in df.iterrows():
        table.add_row(*["" if (v is None or v != v) else (f"{v:.1f}" if isinstance(v, float) else str(v))
                        for v in row.tolist()])
    return table


def summary_table(run_id: str) -> Table:
    return node_table(node_summary(load_events(run_ids=[run_id]), run_id),
                      "Per node: builds, result, start and end (UTC), minutes of cluster time per phase")
