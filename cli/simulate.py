"""The simulated cluster's commands: `demo` (the whole path against a simulated cluster, the README's first
command) and `sim serve` (simulated clusters as their own process). The one module that brings the simulator
and the flows together."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from cli.inputs import bad_input, err, refuse
from cli.render import (
    LiveView,
    frame_table,
    make_console,
    print_finish,
    print_solution,
    run_outcome,
    summary_table,
)
from hciupgrade.records import new_run_id

TRANSPORT_HELP = ("how the simulated nodes listen: negotiate (NTLM with WinRM message encryption over HTTP, as a "
                  "real node), https (Negotiate over TLS, a throwaway CA), basic (plain HTTP, for debugging)")


def pick_scenario(name_or_path: str | None) -> Any:
    """A built-in scenario by name (hciupgrade/sim/scenarios/), else a scenario file."""
    from hciupgrade.sim.scenario import SCENARIO_DIR, ScenarioError, builtin_scenario, load_scenario

    if not name_or_path:
        return builtin_scenario()
    if (SCENARIO_DIR / f"{name_or_path}.yaml").is_file():
        return builtin_scenario(name_or_path)
    if not Path(name_or_path).is_file():
        builtins = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
        raise ScenarioError(f"--scenario: {name_or_path}: no such file, nor a built-in scenario "
                            f"({', '.join(builtins)})")
    return load_scenario(name_or_path)


def demo_approval(chosen: Any) -> Any:
    """The demo's operator approves what the target release removes before the first node (24H2: the Cloud
    Management group), as a real operator does with --approve cloud-management."""
    from hciupgrade.models import Approval

    if chosen.cluster.target_release != "24H2":
        return None
    return Approval(approver="demo operator", reason="hci-upgrade demo", steps=["cloud-management"], source="cli")


def demo(
    scenario: Annotated[Optional[str], typer.Option(
        help="scenario file (YAML), or a built-in one: demo (22H2 to 23H2, the default) or 24h2 (Microsoft's direct "
             "path to 24H2)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
    events: Annotated[Optional[Path], typer.Option(help="write the simulator's event log (JSON Lines) here")] = None,
    full: Annotated[bool, typer.Option("--full", help="the whole path: feature update, cumulative update, post-OS "
                                                      "steps (approved as the demo's operator), readiness")] = False,
    transport: Annotated[str, typer.Option(help=TRANSPORT_HELP)] = "negotiate",
) -> None:
    """Upgrade a simulated 22H2 cluster (to 23H2, or to 24H2 with --scenario 24h2) through the Prefect flow, over
    real PowerShell remoting."""
    from hciupgrade.sim.scenario import ScenarioError  # the simulator loads only for the commands that use it

    with bad_input(ScenarioError):
        chosen = pick_scenario(scenario)
    import secrets

    from flows.rolling_upgrade import rolling_upgrade
    from flows.runtime import embedded_settings
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.arm import FakeArm
    from hciupgrade.sim.harness import SimHarness

    console = err if json_out else make_console()
    run_id = new_run_id()
    check_transport(transport)
    azure = FakeArm(token=secrets.token_urlsafe(24), time_factor=chosen.time_factor).start() if full else None
    with SimHarness(chosen, transport=transport, azure=azure) as harness, \
            tempfile.TemporaryDirectory() as tmp:  # type: ignore[arg-type]
        inventory = Path(tmp) / "inventory.yaml"
        harness.inventory().write(inventory)
        os.environ.update(harness.environment())
        console.print(f"Simulated cluster [bold]{chosen.cluster.name}[/]: {len(chosen.cluster.nodes)} nodes on "
                      f"{chosen.cluster.build} to {chosen.cluster.target_release} "
                      f"({chosen.cluster.target_build}), time x{chosen.time_factor:g}. Starting Prefect (embedded)...")
        view = LiveView(run_id, console)
        thread = view.start()
        options = RunOptions(poll_seconds=5, retry_delay_seconds=0.2, target_build=chosen.cluster.target_build,
                             target_release=chosen.cluster.target_release, approval=demo_approval(chosen))
        with embedded_settings():
            state = rolling_upgrade(inventory=str(inventory), options=options, run_id=run_id, return_state=True)
        view.stop(thread)
        finished = None
        if full and state.is_completed():
            finished = _finish_demo(inventory, options, console)
        if events:
            harness.write_events(events)
    if azure is not None:
        azure.stop()
    outcome = run_outcome(run_id)
    if json_out:
        print(json.dumps(outcome, indent=2))
    else:
        console.print(summary_table(run_id))
        for node in (outcome or {}).get("nodes", []):
            if node.get("error"):
                console.print(f"[red]{node['node']}[/]: {node['error']}")
        console.print(f"Run record: {run_id} (hci-upgrade report {run_id})")
    if outcome is None or not outcome["succeeded"] or not state.is_completed():
        if not json_out:
            console.print(f"[red]Upgrade failed:[/] {outcome and outcome.get('error')}")
        raise typer.Exit(1)
    if full:
        raise typer.Exit(finished or 0)


def _finish_demo(inventory: Path, options: Any, console: Console) -> int:
    """The rest of the path on the demo's cluster: the cumulative update and the post-OS steps (approved as the
    demo's operator, recorded as such), then readiness; returns the exit code."""
    import getpass

    from flows.finish import finish
    from flows.readiness import readiness
    from flows.runtime import embedded_settings
    from hciupgrade.models import Approval
    from hciupgrade.readiness.summary import decide

    approval = Approval(approver=getpass.getuser(), reason="hci-upgrade demo --full", source="cli")
    console.print("Cumulative update, then the post-OS steps (approved for the demo)...")
    with embedded_settings():
        state = finish(inventory=str(inventory), options=options, approval=approval, wait_for_approval=False,
                       return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        console.print(f"[red]Finishing failed:[/] {result}")
        return 1
    print_finish(result, console)
    with embedded_settings():
        ready = readiness(inventory=str(inventory))
    import pandas as pd

    df = pd.DataFrame(ready["records"])
    table = decide(df).reset_index() if not df.empty else df
    console.print(frame_table(table, "Readiness for the solution upgrade"))
    blocked = df.empty or not bool(table["ready"].all())
    if blocked:
        return 1
    stop = options.release.solution_undocumented
    if stop:
        console.print(f"[yellow]Stopping before the solution upgrade:[/] {stop}")
        return 0
    from flows.solution import solution_upgrade

    console.print("The solution upgrade through (simulated) Azure: Validate, then Deploy (approved for the demo)...")
    with embedded_settings():
        solution = solution_upgrade(inventory=str(inventory), approval=approval.model_copy(
            update={"steps": ["solution-upgrade"]}), check_readiness=False, poll_seconds=60)
    print_solution(solution, console)
    return 0 if solution["succeeded"] else 1


def check_transport(transport: str) -> None:
    from hciupgrade.sim.harness import TRANSPORTS

    if transport not in TRANSPORTS:
        refuse(f"[red]--transport: {transport!r} is not one of {', '.join(TRANSPORTS)}[/]")


sim_app = typer.Typer(no_args_is_help=True, help="The simulated cluster.")


@sim_app.command("serve")
def sim_serve(
    inventory_out: Annotated[Path, typer.Option(help="write the clusters' inventory (YAML) here")],
    scenario: Annotated[Optional[list[Path]], typer.Option(help="scenario file (YAML), repeatable; default: the "
                                                                "4-node demo")] = None,
    copies: Annotated[int, typer.Option(min=1, max=999, help="clusters per scenario, named <name>-001...")] = 1,
    events: Annotated[Optional[Path], typer.Option(help="append the event log (JSON Lines) here as it happens")] = None,
    transport: Annotated[str, typer.Option(help=TRANSPORT_HELP)] = "negotiate",
    azure: Annotated[bool, typer.Option("--azure", help="also serve a simulated Azure Resource Manager with the "
                                                        "clusters registered (token from "
                                                        "HCI_UPGRADE_SIM_ARM_TOKEN)")] = False,
) -> None:
    """Run simulated clusters as their own process, as real ones outlive the orchestrator (several at once for a
    fleet), and with --azure their Azure side. The password comes from HCI_UPGRADE_SIM_PASSWORD, which the
    inventory names; stop with Ctrl-C or SIGTERM. Each event in the log names its cluster."""
    check_transport(transport)
    import signal

    from hciupgrade.models import Inventory
    from hciupgrade.sim.arm import FakeArm
    from hciupgrade.sim.harness import ARM_TOKEN_ENV, PASSWORD_ENV, SimHarness
    from hciupgrade.sim.scenario import ScenarioError, builtin_scenario, load_scenario

    with bad_input(ScenarioError):
        chosen = [load_scenario(path) for path in scenario] if scenario else [builtin_scenario()]
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        refuse(f"[red]{PASSWORD_ENV} is not set[/]: export a password for the simulated nodes first, e.g. "
                  f"export {PASSWORD_ENV}=$(openssl rand -base64 18)")
    clusters = [s if copies == 1 else s.model_copy(update={"cluster": s.cluster.model_copy(
        update={"name": f"{s.cluster.name[:11]}-{i + 1:03d}"})}) for s in chosen for i in range(copies)]
    names = [c.cluster.name.lower() for c in clusters]
    if len(set(names)) != len(names):
        refuse("[red]--scenario: two clusters share a name: give each scenario its own cluster name[/]")
    arm = None
    if azure:
        if not os.environ.get(ARM_TOKEN_ENV):
            refuse(f"[red]{ARM_TOKEN_ENV} is not set[/]: the simulated Azure's bearer token, e.g. "
                      f"export {ARM_TOKEN_ENV}=$(openssl rand -hex 24)")
        arm = FakeArm(token=os.environ[ARM_TOKEN_ENV], time_factor=clusters[0].time_factor,
                      faults=clusters[0].azure).start()
    tick = 0.002 if len(clusters) <= 2 else 0.02  # each cluster's driver wakes per tick: fewer wake-ups for many
    harnesses = [SimHarness(c, password=password, transport=transport, tick=tick, azure=arm)  # type: ignore[arg-type]
                 for c in clusters]
    if events:
        events.write_text("")
        sink = open(events, "a")
        lock = threading.Lock()

        def writer(name: str):  # noqa: ANN202
            def write(event: dict) -> None:
                with lock:
                    sink.write(json.dumps({**event, "cluster": name}) + "\n")
                    sink.flush()
            return write

        for harness in harnesses:
            harness.sim.on_event(writer(harness.sim.name))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    shared = len(harnesses) > 2  # one driver for many clusters: a thread each would wake 50 times a tick
    for harness in harnesses:
        harness.start(drive=not shared)
    try:
        Inventory(clusters=[c for h in harnesses for c in h.inventory().clusters]).write(inventory_out)
        err.print(f"Simulated clusters {', '.join(h.sim.name for h in harnesses[:5])}"
                  f"{'...' if len(harnesses) > 5 else ''}: {sum(len(h.endpoints) for h in harnesses)} nodes on "
                  f"127.0.0.1; inventory: {inventory_out}")
        while not stop.wait(tick if shared else 0.2):
            for harness in harnesses if shared else ():
                harness.step()
    except KeyboardInterrupt:
        pass
    finally:
        for harness in harnesses:
            harness.stop()
        if arm is not None:
            arm.stop()


