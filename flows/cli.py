"""The `hci-upgrade` command. It lives beside the flows it starts (the domain package never imports Prefect)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Optional

# Prefect reads its settings at import: keep its console quiet unless asked, before anything imports it.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hciupgrade.records import PHASES, load_events, new_run_id, node_summary
from hciupgrade.sim.scenario import ScenarioError, builtin_scenario, load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Upgrade Azure Stack HCI clusters from 22H2 to 23H2, node by node, as Prefect flows.")
err = Console(stderr=True)


@app.callback()
def _commands() -> None:
    """Commands: demo."""


class LiveView:
    """Follows a run's record file and draws one row per node: its current phase and how long it took."""

    def __init__(self, record: Path, console: Console) -> None:
        self.record = record
        self.console = console
        self.nodes: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._offset = 0

    def _read(self) -> None:
        if not self.record.exists():
            return
        with open(self.record) as fh:
            fh.seek(self._offset)
            for line in fh:
                if not line.endswith("\n"):
                    break
                self._offset += len(line.encode())
                event = json.loads(line)
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
        table = Table(title="Rolling upgrade", expand=False)
        for column in ("node", "phase", "progress", "result"):
            table.add_column(column)
        for name, row in self.nodes.items():
            bar = "█" * row["done"] + "·" * (len(PHASES) - row["done"])
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

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def stop(self, thread: threading.Thread) -> None:
        self._stop.set()
        thread.join(timeout=2)


def summary_table(record: Path, run_id: str) -> Table:
    df = node_summary(load_events([record]), run_id).drop(columns=["error"])
    for column in ("build_before", "build_after"):
        df[column] = df[column].map(lambda b: b.removeprefix("10.0.") if isinstance(b, str) else b)
    df = df.rename(columns={"build_before": "before", "build_after": "after", "wait-back": "back",
                            "wait-repair": "repair?", "wait-storage": "resync"})
    table = Table(title="Per node: builds, result, minutes of cluster time per phase", box=box.SIMPLE_HEAD)
    for column in df.columns:
        table.add_column(str(column), justify="left" if column in ("node", "before", "after", "result") else "right")
    for _, row in df.iterrows():
        table.add_row(*["" if (v is None or v != v) else (f"{v:.1f}" if isinstance(v, float) else str(v))
                        for v in row.tolist()])
    return table


@app.command()
def demo(
    scenario: Annotated[Optional[Path], typer.Option(help="scenario file (YAML); default: the 4-node demo")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
    events: Annotated[Optional[Path], typer.Option(help="write the simulator's event log (JSON Lines) here")] = None,
) -> None:
    """Upgrade a simulated 22H2 cluster to 23H2 through the Prefect flow, over real PowerShell remoting."""
    try:
        chosen = load_scenario(scenario) if scenario else builtin_scenario()
    except ScenarioError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    from flows.rolling_upgrade import rolling_upgrade
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.harness import SimHarness

    console = err if json_out else Console()
    run_id = new_run_id()
    with SimHarness(chosen) as harness, tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.yaml"
        harness.inventory().write(inventory)
        os.environ.update(harness.environment())
        from hciupgrade.records import records_dir

        record = records_dir() / f"{run_id}.jsonl"
        console.print(f"Simulated cluster [bold]{chosen.cluster.name}[/]: {len(chosen.cluster.nodes)} nodes on "
                      f"{chosen.cluster.build}, time x{chosen.time_factor:g}. Starting Prefect (embedded)...")
        view = LiveView(record, console)
        thread = view.start()
        options = RunOptions(poll_seconds=5, retry_delay_seconds=0.2, target_build=chosen.cluster.target_build)
        state = rolling_upgrade(inventory=str(inventory), options=options, run_id=run_id, return_state=True)
        view.stop(thread)
        if events:
            harness.write_events(events)
    outcome = next((e["outcome"] for e in map(json.loads, record.read_text().splitlines())
                    if e.get("phase") == "run" and "outcome" in e), None)
    if json_out:
        print(json.dumps(outcome, indent=2))
    else:
        console.print(summary_table(record, run_id))
        for node in (outcome or {}).get("nodes", []):
            if node.get("error"):
                console.print(f"[red]{node['node']}[/]: {node['error']}")
        console.print(f"Run record: {record}")
    if outcome is None or not outcome["succeeded"] or not state.is_completed():
        if not json_out:
            console.print(f"[red]Upgrade failed:[/] {outcome and outcome.get('error')}")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
