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

# Prefect reads its settings at import, so before anything imports it: the run's story (INFO) goes to Prefect's
# API, where the UI shows it; the console shows warnings only, unless asked.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from flows.views import LiveView, make_console, summary_table
from hciupgrade.records import new_run_id
from hciupgrade.sim.scenario import ScenarioError, builtin_scenario, load_scenario

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Upgrade Azure Stack HCI clusters from 22H2 to 23H2, node by node, as Prefect flows.")
err = Console(stderr=True, soft_wrap=True)  # an error line is never broken inside a path
TRANSPORT_HELP = ("how the simulated nodes listen: negotiate (NTLM with WinRM message encryption over HTTP, as a "
                  "real node), https (Negotiate over TLS, a throwaway CA), basic (plain HTTP, for debugging)")


@app.callback()
def _commands() -> None:
    """Commands: demo, upgrade, status, report, readiness, sim serve."""


@app.command()
def demo(
    scenario: Annotated[Optional[Path], typer.Option(help="scenario file (YAML); default: the 4-node demo")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
    events: Annotated[Optional[Path], typer.Option(help="write the simulator's event log (JSON Lines) here")] = None,
    full: Annotated[bool, typer.Option("--full", help="the whole path: feature update, cumulative update, post-OS "
                                                      "steps (approved as the demo's operator), readiness")] = False,
    transport: Annotated[str, typer.Option(help=TRANSPORT_HELP)] = "negotiate",
) -> None:
    """Upgrade a simulated 22H2 cluster to 23H2 through the Prefect flow, over real PowerShell remoting."""
    try:
        chosen = load_scenario(scenario) if scenario else builtin_scenario()
    except ScenarioError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    import secrets

    from flows.locking import embedded_settings
    from flows.rolling_upgrade import rolling_upgrade
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.arm import FakeArm
    from hciupgrade.sim.harness import SimHarness

    console = err if json_out else make_console()
    run_id = new_run_id()
    _check_transport(transport)
    azure = FakeArm(token=secrets.token_urlsafe(24), time_factor=chosen.time_factor).start() if full else None
    with SimHarness(chosen, transport=transport, azure=azure) as harness, \
            tempfile.TemporaryDirectory() as tmp:  # type: ignore[arg-type]
        inventory = Path(tmp) / "inventory.yaml"
        harness.inventory().write(inventory)
        os.environ.update(harness.environment())
        console.print(f"Simulated cluster [bold]{chosen.cluster.name}[/]: {len(chosen.cluster.nodes)} nodes on "
                      f"{chosen.cluster.build}, time x{chosen.time_factor:g}. Starting Prefect (embedded)...")
        view = LiveView(run_id, console)
        thread = view.start()
        options = RunOptions(poll_seconds=5, retry_delay_seconds=0.2, target_build=chosen.cluster.target_build)
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
    outcome = _outcome(run_id)
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
    from flows.locking import embedded_settings
    from flows.readiness import readiness
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
    _print_finish(result, console)
    with embedded_settings():
        ready = readiness(inventory=str(inventory))
    import pandas as pd

    df = pd.DataFrame(ready["records"])
    table = decide(df).reset_index() if not df.empty else df
    console.print(_frame_table(table, "Readiness for the solution upgrade"))
    blocked = df.empty or not bool(table["ready"].all())
    if blocked:
        return 1
    from flows.solution import solution_upgrade

    console.print("The solution upgrade through (simulated) Azure: Validate, then Deploy (approved for the demo)...")
    with embedded_settings():
        solution = solution_upgrade(inventory=str(inventory), approval=approval.model_copy(
            update={"steps": ["solution-upgrade"]}), check_readiness=False, poll_seconds=60)
    _print_solution(solution, console)
    return 0 if solution["succeeded"] else 1


def _print_solution(result: dict, console: Console) -> None:
    import pandas as pd

    if result.get("prerequisites"):
        console.print(_frame_table(pd.DataFrame(result["prerequisites"]), "Solution-upgrade prerequisites"))
    for key, title in (("validation", "Validation steps"), ("deployment", "Deployment steps")):
        if result.get(key):
            df = pd.DataFrame(result[key])[["step", "status", "start", "end", "error"]].fillna("")
            df["start"], df["end"] = df["start"].str[11:19], df["end"].str[11:19]
            console.print(_frame_table(df, title))
    if result.get("error"):
        console.print(f"[red]Solution upgrade:[/] {result['error']}")
    elif result.get("awaiting_approval"):
        console.print("[yellow]Validation passed; the Deploy waits for an approval (--approve --reason).[/]")
    else:
        console.print(f"Solution upgrade: {result.get('stage')}")


def _frame_table(df: Any, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in df.columns:
        table.add_column(str(column))
    for row in df.astype(str).itertuples(index=False):
        table.add_row(*row)
    return table


def _print_finish(result: dict, console: Console) -> None:
    from hciupgrade.postupgrade import Levels, levels_table, validation_summary

    post = result.get("post_upgrade") or result
    before = Levels(**post["before"]) if post.get("before") else None
    after = Levels(**post["after"]) if post.get("after") else None
    console.print(_frame_table(levels_table(before, after), "Before and after"))
    if post.get("validation"):
        console.print(_frame_table(validation_summary(post["validation"]), "Test-Cluster"))
    for finding in post.get("findings", []):
        if not finding["ok"]:
            console.print(f"[yellow]{finding['check']}[/]: {finding['detail']}")
    if post.get("awaiting_approval"):
        console.print(f"[yellow]Awaiting approval:[/] {', '.join(post['awaiting_approval'])}: run again with "
                      "--approve --reason TEXT (or approve in the Prefect UI)")


def _check_transport(transport: str) -> None:
    from hciupgrade.sim.harness import TRANSPORTS

    if transport not in TRANSPORTS:
        err.print(f"[red]--transport: {transport!r} is not one of {', '.join(TRANSPORTS)}[/]")
        raise typer.Exit(2)


sim_app = typer.Typer(no_args_is_help=True, help="The simulated cluster.")
app.add_typer(sim_app, name="sim")


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
    _check_transport(transport)
    import signal

    from hciupgrade.models import Inventory
    from hciupgrade.sim.arm import FakeArm
    from hciupgrade.sim.harness import ARM_TOKEN_ENV, PASSWORD_ENV, SimHarness

    try:
        chosen = [load_scenario(path) for path in scenario] if scenario else [builtin_scenario()]
    except ScenarioError as e:
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        err.print(f"[red]{PASSWORD_ENV} is not set[/]: export a password for the simulated nodes first, e.g. "
                  f"export {PASSWORD_ENV}=$(openssl rand -base64 18)")
        raise typer.Exit(2)
    clusters = [s if copies == 1 else s.model_copy(update={"cluster": s.cluster.model_copy(
        update={"name": f"{s.cluster.name[:11]}-{i + 1:03d}"})}) for s in chosen for i in range(copies)]
    names = [c.cluster.name.lower() for c in clusters]
    if len(set(names)) != len(names):
        err.print("[red]--scenario: two clusters share a name: give each scenario its own cluster name[/]")
        raise typer.Exit(2)
    arm = None
    if azure:
        if not os.environ.get(ARM_TOKEN_ENV):
            err.print(f"[red]{ARM_TOKEN_ENV} is not set[/]: the simulated Azure's bearer token, e.g. "
                      f"export {ARM_TOKEN_ENV}=$(openssl rand -hex 24)")
            raise typer.Exit(2)
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
    for harness in harnesses:
        harness.start()
    try:
        Inventory(clusters=[c for h in harnesses for c in h.inventory().clusters]).write(inventory_out)
        err.print(f"Simulated clusters {', '.join(h.sim.name for h in harnesses[:5])}"
                  f"{'...' if len(harnesses) > 5 else ''}: {sum(len(h.endpoints) for h in harnesses)} nodes on "
                  f"127.0.0.1; inventory: {inventory_out}")
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for harness in harnesses:
            harness.stop()
        if arm is not None:
            arm.stop()


@app.command()
def upgrade(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML)")],
    cluster: Annotated[Optional[str], typer.Option(help="the cluster to upgrade (optional with one cluster)")] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML), with CAU's names")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print preflight, scan and plan; change nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """Upgrade one cluster of an inventory, node by node. Exit 0 when it ends upgraded, 1 when not, 2 for bad
    input. Run it again after a crash: it picks up where the cluster is."""
    target, run_options = _inputs(inventory, cluster, options)
    for warning in target.warnings():
        err.print(f"[yellow]warning:[/] {warning}")
    console = err if json_out else make_console()
    if dry_run:
        outcome = _dry_run(target, run_options, console)
        if json_out:
            print(json.dumps(outcome, indent=2))
        raise typer.Exit(0 if outcome["succeeded"] else 1)
    from flows.locking import embedded_settings
    from flows.rolling_upgrade import rolling_upgrade
    run_id = new_run_id()
    _announce(run_id, target.name)
    view = LiveView(run_id, console) if not json_out else None
    thread = view.start() if view else None
    with embedded_settings():
        try:
            state = rolling_upgrade(inventory=str(inventory), cluster=target.name, options=run_options,
                                    run_id=run_id, return_state=True)
        except Exception as e:  # the cluster's work is done; Prefect could not record its end
            state = _late_state(run_id, e)
    if view and thread:
        view.stop(thread)
    _settle_records()
    outcome = _outcome(run_id)
    if json_out:
        print(json.dumps(outcome, indent=2))
    elif outcome is not None:
        if any(n["result"] != "not-started" for n in outcome.get("nodes", [])):  # a refused run: one line
            console.print(summary_table(run_id))
        if outcome and outcome.get("error"):
            console.print(f"[red]Stopped:[/] {outcome['error']}")
    if outcome and outcome.get("window_ended"):
        raise typer.Exit(EXIT_WINDOW_ENDED)
    raise typer.Exit(0 if outcome and outcome["succeeded"] and (state is None or state.is_completed()) else 1)


def _settle_records() -> None:
    """A run that ended while its record store was down leaves events in its spool: wait for the store (two
    minutes at most), or say where they wait."""
    from hciupgrade.store import open_store

    left = open_store().settle_spool(timeout=120)
    if left is not None:
        err.print(f"[yellow]warning:[/] the record store does not answer: this run's last events wait in {left}; "
                  "the next run on this machine writes them")


def _late_state(run_id: str, error: Exception) -> None:
    """Prefect's API failed at the very end of a run whose work was done (its server or database down): the
    outcome this process holds is the run's, and the flow run's state is set as soon as the API answers again
    (within two minutes), so that the UI never shows it Running for good."""
    from flows.rolling_upgrade import FINISHED
    from tasks.node_steps import prefect_api_failure

    if not prefect_api_failure(error) or run_id not in FINISHED:
        raise error
    outcome, flow_run_id = FINISHED[run_id]
    err.print(f"[yellow]warning:[/] Prefect's API failed at the end of run {run_id} ({error}); its outcome is "
              "this process's")
    if flow_run_id is None:
        return None
    from uuid import UUID

    from prefect import get_client
    from prefect.states import Completed, Failed

    final = Completed(message="upgraded") if outcome.succeeded else Failed(message=outcome.reason)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(UUID(flow_run_id), final, force=True)
            err.print(f"[yellow]warning:[/] flow run {flow_run_id} set {final.type.value} once Prefect answered")
            return None
        except Exception:  # noqa: BLE001 - still down: try again
            time.sleep(5)
    err.print(f"[red]flow run {flow_run_id} could not be set {final.type.value}: Prefect's API does not answer; "
              "the next run of this cluster sets it[/]")
    return None


def _inputs(inventory: Path, cluster: str | None, options: Path | None,
            require: str | None = None) -> tuple[Any, Any]:
    """The cluster and its run options, checked before anything connects: bad input (a field, a missing
    credential variable, `require`: a flag that must be given) exits 2 with its message."""
    from hciupgrade.models import InputError, load_inventory, load_options

    try:
        target = load_inventory(inventory).cluster(cluster)
        run_options = load_options(options)
        run_options.check_against(target)
        target.credential.resolve(secret_block=lambda name: "")  # fail early on a missing environment variable
        if require:
            raise InputError(require)
    except Exception as e:  # noqa: BLE001 - an InputError or a credential problem: bad input either way
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    return target, run_options


EXIT_AWAITING_APPROVAL = 3
EXIT_WINDOW_ENDED = 4  # StopAfter passed: stopped cleanly between nodes; run again in the next window


@app.command("survey")
def survey_cmd(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML)")],
    cluster: Annotated[Optional[str], typer.Option(help="the cluster (optional with one cluster)")] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML): the media path, the target")] = None,
    out: Annotated[Path, typer.Option(help="where survey.json, twin.yaml and the raw answers go")] = Path("survey"),
    json_out: Annotated[bool, typer.Option("--json", help="print survey.json")] = False,
) -> None:
    """Read every node of a cluster, change nothing, and check each answer the upgrade depends on. The first
    command against a real cluster, safe at any time. Exit 0 with nothing blocking, 1 with something blocking, 2
    for bad input."""
    import yaml

    from hciupgrade.cluster import ClusterClient
    from hciupgrade.survey import read_only, survey

    target, run_options = _inputs(inventory, cluster, options)
    client = read_only(ClusterClient(target, target.credential.resolve(secret_block=_secret)))
    try:
        from flows.solution import azure_cluster

        found = survey(client, run_options, azure_cluster(target) if target.azure is not None else None)
    finally:
        client.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "survey.json").write_text(json.dumps(found.report(), indent=2) + "\n")
    (out / "twin.yaml").write_text("# a scenario of " + target.name + " read by hci-upgrade survey: rehearse with "
                                   "hci-upgrade demo --scenario twin.yaml\n" + yaml.safe_dump(found.scenario))
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    for node, answers in found.answers.items():
        (raw / f"{node}.json").write_text(json.dumps(answers, indent=1, default=str) + "\n")
    if json_out:
        print(json.dumps(found.report(), indent=2))
    else:
        table = Table(title=f"Survey of {target.name} (nothing was changed)")
        for column in ("check", "expected", "observed", "verdict", "fix"):
            table.add_column(column, overflow="fold")
        style = {"ok": "green", "warning": "yellow", "blocking": "red"}
        for f in found.findings:
            table.add_row(f.check, f.expected, f.observed, f"[{style[f.verdict]}]{f.verdict}[/]", f.fix)
        make_console().print(table)
        make_console().print(f"Written: {out / 'survey.json'}, {out / 'twin.yaml'}, {raw}/")
    raise typer.Exit(1 if found.blocking else 0)


def _secret(name: str) -> str:
    from flows.rolling_upgrade import load_secret

    return load_secret(name)


@app.command("fleet")
def fleet_cmd(
    inventory: Annotated[Path, typer.Option(help="fleet inventory (YAML): clusters with tags, windows, waves")],
    tag: Annotated[Optional[list[str]], typer.Option(help="only clusters with this tag, key=value (repeatable)")
                   ] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML), with CAU's names")] = None,
    deployment: Annotated[Optional[str], typer.Option(help="with a Prefect server: the rolling-upgrade deployment "
                                                           "each cluster runs as (workers take them)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the waves and each cluster's window and fit; "
                                                            "change nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the plan or the result as JSON")] = False,
) -> None:
    """A fleet in waves: canaries first, at most K clusters at once, each inside its maintenance window and only
    when its next node fits. Exit 0 when every selected cluster ends upgraded, 1 when one fails or the fleet
    stops, 4 when windows ended first (run again), 2 for bad input."""
    from hciupgrade.fleet import fleet_plan
    from hciupgrade.models import InputError, load_inventory, load_options

    try:
        fleet = load_inventory(inventory)
        run_options = load_options(options)
        selected = fleet.select(tag)
        if not selected:
            raise InputError(f"--tag: no cluster of {inventory} carries {', '.join(tag or [])}")
        for cluster in selected:
            run_options.check_against(cluster)
            cluster.credential.resolve(secret_block=lambda name: "")
    except Exception as e:  # noqa: BLE001 - bad input, before anything connects
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    waves, fits = fleet_plan(fleet, tag)
    plan = [{"wave": w.name, "cluster": name, "window": fits[name].window,
             "opens": fits[name].opens.isoformat() if fits[name].opens else None,
             "closes": fits[name].closes.isoformat() if fits[name].closes else None,
             "open_now": fits[name].open_now, "node_estimate_min": round(fits[name].estimate.needed_s / 60, 1),
             "estimate_from": fits[name].estimate.source, "next_node_fits": fits[name].fits}
            for w in waves for name in w.clusters]
    console = err if json_out else make_console()
    if dry_run or not json_out:
        table = Table(title=f"Fleet: {len(plan)} clusters in {len(waves)} waves, at most "
                            f"{fleet.waves.max_parallel} at once", box=box.SIMPLE_HEAD)
        for column in ("wave", "cluster", "window", "next open (UTC)", "open now", "node estimate", "fits"):
            table.add_column(column)
        for row in plan:
            table.add_row(row["wave"], row["cluster"], row["window"], (row["opens"] or "")[:16].replace("T", " "),
                          "yes" if row["open_now"] else "no",
                          f"{row['node_estimate_min']:.0f} min ({row['estimate_from']})",
                          "yes" if row["next_node_fits"] else "[yellow]no[/]")
        console.print(table)
    if dry_run:
        if json_out:
            print(json.dumps({"waves": plan, "schedules": fleet.schedules()}, indent=2))
        raise typer.Exit(0)
    from flows.fleet import fleet_upgrade
    from flows.locking import embedded_settings

    with embedded_settings():
        state = fleet_upgrade(inventory=str(inventory), tags=tag, options=run_options,
                              cluster_deployment=deployment, return_state=True)
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    if not isinstance(summary, dict):
        err.print(f"[red]The fleet run failed:[/] {state.message}")
        raise typer.Exit(1)
    if json_out:
        print(json.dumps(summary, indent=2, default=str))
    else:
        table = Table(title="Fleet result", box=box.SIMPLE_HEAD)
        for column in ("cluster", "state", "windows", "reason"):
            table.add_column(column)
        for r in summary["clusters"]:
            table.add_row(r["cluster"], r["state"], str(r["windows"]), r["reason"] or "")
        console.print(table)
        if summary["stopped"]:
            console.print(f"[red]Stopped:[/] {summary['stopped']}")
    states = {r["state"] for r in summary["clusters"]}
    if summary["stopped"] or "failed" in states:
        raise typer.Exit(1)
    raise typer.Exit(EXIT_WINDOW_ENDED if states - {"upgraded"} else 0)


@app.command("solution")
def solution_cmd(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML) with the cluster's azure section")],
    cluster: Annotated[Optional[str], typer.Option(help="the cluster (optional with one cluster)")] = None,
    validate_only: Annotated[bool, typer.Option("--validate-only", help="prerequisites and Validate only")] = False,
    approve: Annotated[bool, typer.Option("--approve", help="approve the Deploy (hours; no rollback)")] = False,
    reason: Annotated[Optional[str], typer.Option(help="why (a change ticket): required with --approve")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="after a failed Deploy: submit it again, as the "
                                                          "portal's resume")] = False,
    assign_roles: Annotated[bool, typer.Option("--assign-roles", help="assign the template's three roles to each "
                                                                      "Arc machine's identity (needs --approve)")]
    = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """The solution upgrade through Azure: prerequisites, Validate, then (approved) Deploy, followed to its end;
    a Deploy already running is followed, never submitted twice. Exit 0 when deployed (or validated with
    --validate-only), 1 when it fails, 3 when the Deploy awaits an approval, 2 for bad input."""
    import getpass

    from flows.locking import embedded_settings
    from flows.solution import solution_upgrade
    from hciupgrade.models import Approval, InputError, load_inventory

    try:
        target = load_inventory(inventory).cluster(cluster)
        if target.azure is None:
            raise InputError(f"cluster {target.name} has no azure section in {inventory}")
        if approve and not reason:
            raise InputError("--approve needs --reason (a change ticket): the approval is recorded")
        if assign_roles and not approve:
            raise InputError("--assign-roles needs --approve --reason: role assignments are changes in the tenant")
        problems = target.azure.upgrade_problems([n.name for n in target.nodes])
        if problems:
            raise InputError(f"{inventory}, cluster {target.name}: the solution upgrade needs " + "; ".join(problems))
        target.azure.credential.build()  # a missing variable is bad input, before anything is read
    except Exception as e:  # noqa: BLE001
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    approval = Approval(approver=getpass.getuser(), reason=reason or "", steps=["solution-upgrade"],
                        source="cli") if approve else None
    with embedded_settings():
        result = solution_upgrade(inventory=str(inventory), cluster=target.name, approval=approval,
                                  validate_only=validate_only, resume=resume, wait_for_approval=False,
                                  assign_roles=assign_roles)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_solution(result, make_console())
    if result["error"]:
        raise typer.Exit(1)
    raise typer.Exit(EXIT_AWAITING_APPROVAL if result["awaiting_approval"] else 0)


@app.command("updates")
def updates_cmd(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML) with the clusters' azure sections")],
    cluster: Annotated[Optional[list[str]], typer.Option(help="only these clusters (repeatable)")] = None,
    apply: Annotated[Optional[str], typer.Option(help="apply this update (e.g. Solution10.2503.0.13) and follow "
                                                      "its run")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Solution updates per cluster (state, health, failed checks); with --apply, apply one and follow its update
    run to the end (a run already in progress is followed, not applied twice). Exit 1 when an apply fails."""
    import pandas as pd

    from flows.locking import embedded_settings
    from flows.solution import solution_updates
    from hciupgrade.models import InputError, load_inventory

    try:
        inv = load_inventory(inventory)
        names = [inv.cluster(c).name for c in cluster] if cluster else [c.name for c in inv.clusters if c.azure]
        if not names:
            raise InputError(f"no cluster of {inventory} has an azure section")
        for name in names:
            if inv.cluster(name).azure is None:
                raise InputError(f"cluster {name} has no azure section")
    except Exception as e:  # noqa: BLE001
        err.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    with embedded_settings():
        result = solution_updates(inventory=str(inventory), clusters=names, apply=apply)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        console = make_console()
        console.print(_frame_table(pd.DataFrame(result["updates"]).fillna(""), "Solution updates"))
        if len({u["cluster"] for u in result["updates"]}) > 1:
            console.print(_frame_table(pd.DataFrame(result["fleet"]), "Across the fleet: clusters per state"))
        for name, applied in result["applied"].items():
            console.print(f"{name}: {applied['update']} {applied['done'] or 'not applied'}: "
                          f"{applied['state'] or ''} {applied['error'] or ''}")
    raise typer.Exit(1 if any(a["error"] for a in result["applied"].values()) else 0)


@app.command("finish")
def finish_cmd(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML)")],
    cluster: Annotated[Optional[str], typer.Option(help="the cluster (optional with one cluster)")] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML), with CAU's names")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="approve the irreversible steps (functional level, "
                                                            "storage pool, listed VM versions)")] = False,
    reason: Annotated[Optional[str], typer.Option(help="why (a change ticket): required with --approve")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """The cumulative update on every node, then the post-OS steps. Exit 0 when done, 1 when it failed, 2 for bad
    input, 3 when the irreversible steps await an approval (run again with --approve --reason)."""
    import getpass

    from hciupgrade.models import Approval

    reason_missing = approve and not (reason or "").strip()
    target, run_options = _inputs(inventory, cluster, options, require="--reason: an approval needs a reason (a "
                                  "change ticket, a window), e.g. --reason CHG-1234" if reason_missing else None)
    approval = Approval(approver=getpass.getuser(), reason=reason.strip(), source="cli") if approve and reason \
        else None
    from flows.finish import finish
    from flows.locking import embedded_settings

    console = err if json_out else make_console()
    with embedded_settings():
        state = finish(inventory=str(inventory), cluster=target.name, options=run_options, approval=approval,
                       wait_for_approval=False, return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        if json_out:
            print(json.dumps({"succeeded": False, "error": str(result)}, indent=2))
        else:
            console.print(f"[red]Stopped:[/] {result}")
        raise typer.Exit(1)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_finish(result, console)
    post = result["post_upgrade"]
    raise typer.Exit(0 if post["succeeded"] else EXIT_AWAITING_APPROVAL if post["awaiting_approval"] else 1)


@app.command("offline")
def offline_cmd(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML)")],
    cluster: Annotated[Optional[str], typer.Option(help="the cluster (optional with one cluster)")] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML)")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="approve the downtime: every VM and the cluster stop")]
    = False,
    reason: Annotated[Optional[str], typer.Option(help="why (a change ticket, the window): required")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
) -> None:
    """The fast offline path for a window that allows downtime: every VM shut down, the cluster stopped, every
    node updated at once (feature update, cumulative update), everything started again. Exit 0 when done, 1 when
    it failed (the cluster is brought back as far as it can, and the output says what is left), 2 for bad input."""
    import getpass

    from hciupgrade.models import Approval

    approved = approve and (reason or "").strip()
    target, run_options = _inputs(inventory, cluster, options, require=None if approved else (
        "--approve --reason: the offline path takes the whole cluster down; it runs only with an approval and its "
        "reason, e.g. --approve --reason 'CHG-1234 window Sat 02:00'"))
    from flows.locking import embedded_settings
    from flows.offline import offline_upgrade

    approval = Approval(approver=getpass.getuser(), reason=str(reason).strip(), steps=["offline"], source="cli")
    console = err if json_out else make_console()
    console.print(f"Offline upgrade of [bold]{target.name}[/], approved by {approval.approver}: {approval.reason}")
    with embedded_settings():
        state = offline_upgrade(inventory=str(inventory), cluster=target.name, options=run_options,
                                approval=approval, wait_for_approval=False, return_state=True)
    result = state.result(raise_on_failure=False)
    if json_out:
        print(json.dumps(result if isinstance(result, dict) else {"succeeded": False, "error": str(result)},
                         indent=2))
    elif isinstance(result, dict):
        console.print(_frame_table(_builds_frame(result), "Offline upgrade"))
    else:
        console.print(f"[red]Stopped:[/] {result}")
    raise typer.Exit(0 if isinstance(result, dict) and result.get("succeeded") else 1)


def _builds_frame(result: dict) -> Any:
    import pandas as pd

    return pd.DataFrame([{"node": n, "before": b, "after": result["builds_after"].get(n, "")}
                         for n, b in result["builds_before"].items()])


def _announce(run_id: str, cluster: str) -> None:
    """The run's first record event, written before Prefect starts (it takes seconds): `status` says
    RunInProgress from the moment the command runs."""
    from hciupgrade.records import RunRecorder
    from hciupgrade.store import host_id

    RunRecorder(run_id, cluster).emit(None, "run", "running", stage="starting", pid=os.getpid(), host=host_id())


def _outcome(run_id: str) -> dict | None:
    """The outcome a run recorded at its end (None if it has not ended): this process's when it ran here (the
    record store may not answer), the record's otherwise."""
    from flows.rolling_upgrade import FINISHED
    from hciupgrade.store import open_store

    if run_id in FINISHED:
        return FINISHED[run_id][0].model_dump(mode="json")
    ends = [e for e in open_store().events(run_ids=[run_id], phases=["run"]) if "outcome" in e]
    return ends[-1]["outcome"] if ends else None


def _dry_run(target: Any, options: Any, console: Console) -> dict:
    """Preflight, scan and plan without Prefect and without changing anything."""
    from hciupgrade.clock import ClusterClock
    from hciupgrade.cluster import ClusterClient
    from hciupgrade.engine import RollingUpgrade
    from hciupgrade.records import RunRecorder
    from hciupgrade.steps import Steps

    client = ClusterClient(target, target.credential.resolve())
    recorder = RunRecorder(new_run_id(), target.name, time_factor=target.time_factor)
    try:
        engine = RollingUpgrade(client, options, recorder, Steps(client, options, ClusterClock(target.time_factor)))
        outcome, pre = engine.run(dry_run=True)
    finally:
        client.close()
    findings = Table(title=f"Preflight of {target.name}", box=box.SIMPLE_HEAD)
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
    return {**outcome.model_dump(mode="json"), "dry_run": True,
            "findings": [f.__dict__ for f in pre.findings], "scan": [r.__dict__ for r in pre.scan],
            "plan": [{"node": p.node, "position": p.position, "action": p.action, "detail": p.detail,
                      "steps": list(p.steps)}
                     for p in pre.plan]}


@app.command()
def status(cluster: Annotated[str, typer.Argument(help="the cluster's name")]) -> None:
    """The latest run on a cluster, like Get-CauRun: state, run id, machine, start, current node, each node's
    latest step. Dry runs and refused runs are not taken as the latest run."""
    from hciupgrade.reports import run_status

    current = run_status(cluster)
    console = make_console()
    if current is None:
        console.print(f"RunNotInProgress: no run of hci-upgrade on {cluster} is recorded")
        return
    console.print(f"[bold]{current.state}[/]  run {current.run_id}{f' ({current.label})' if current.label else ''}"
                  f"  on {current.host or 'unknown host'}  started {current.started:%Y-%m-%d %H:%M:%S} UTC"
                  + (f"  result {current.result}" if current.result else "")
                  + (f"  current node {current.current_node}" if current.current_node else ""))
    for warning in current.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("node", "step", "status", "at (UTC)"):
        table.add_column(column)
    for _, row in current.nodes.iterrows():
        table.add_row(row["node"], row["phase"], row["status"], f"{row['at']:%H:%M:%S}")
    console.print(table)


@app.command()
def report(run: Annotated[Optional[str], typer.Argument(help="run id (default: the latest run)")] = None,
           cluster: Annotated[Optional[str], typer.Option(help="the latest run of this cluster")] = None) -> None:
    """A run's report, like Get-CauReport: per node the builds before and after, result, attempts, start and end,
    time in each phase and the error; the same columns as the demo's table."""
    from flows.views import node_table
    from hciupgrade.reports import latest_run_id, run_report

    run_id = run or latest_run_id(cluster)
    found = run_report(run_id) if run_id else None
    if found is None:
        err.print(f"[red]no run {run_id or ''} in the records[/]" + (f" of {cluster}" if cluster else ""))
        raise typer.Exit(2)
    header, df = found
    label = f" ({header['aside']})" if header["aside"] else ""
    ended = f", ended {header['ended'][:19]} UTC: {header['status']}" if header["ended"] else ", not ended"
    console = make_console()
    console.print(f"Run {run_id}{label} on {header['cluster']} from {header['host'] or 'unknown host'}: started "
                  f"{header['started'][:19]} UTC{ended}")
    console.print(node_table(df, "Per node: builds, result, start and end (UTC), minutes of cluster time per phase"))
    for node, error in zip(df["node"], df["error"], strict=False):
        if isinstance(error, str) and error:
            console.print(f"[red]{node}[/]: {error}")


records_app = typer.Typer(help="The run records: prune or archive old runs, import records of earlier versions.",
                          no_args_is_help=True)
app.add_typer(records_app, name="records")


@records_app.command("prune")
def records_prune(
    older_than: Annotated[float, typer.Option(help="prune runs started more than this many days ago")],
    archive: Annotated[Optional[Path], typer.Option(help="first write their events to a Parquet file here")] = None,
) -> None:
    """Remove old runs from the records. Runs that have not ended, and runs whose pause a node may still carry,
    are kept whatever their age."""
    from hciupgrade.records import owned_nodes
    from hciupgrade.store import older_than as cutoff
    from hciupgrade.store import open_store

    if older_than < 0:
        err.print("[red]--older-than: give a number of days, 0 or more[/]")
        raise typer.Exit(2)
    store = open_store()
    keep = {run for c in store.clusters() for run in owned_nodes(c, store=store).values()}
    done = store.prune(cutoff(older_than), keep=keep, archive=archive)
    make_console().print(f"pruned {done.runs} runs ({done.events} events)"
                         + (f", archived to {done.archive}" if done.archive else "")
                         + (f"; kept {done.kept_open} runs that have not ended" if done.kept_open else "")
                         + (f"; kept {len(keep)} runs whose pause a node may carry" if keep else ""))


@records_app.command("import")
def records_import(files: Annotated[list[Path], typer.Argument(help="JSON Lines record files of earlier versions")]
                   ) -> None:
    """Import record files of earlier versions (each once; those under $HCI_UPGRADE_HOME/records are imported
    when the store first opens)."""
    from hciupgrade.store import open_store

    missing = [f for f in files if not f.is_file()]
    if missing:
        err.print(f"[red]{missing[0]}: no such file[/]")
        raise typer.Exit(2)
    make_console().print(f"imported {open_store().import_jsonl(files)} events from {len(files)} files")


@app.command("readiness")
def readiness_cmd(
    results: Annotated[Optional[list[Path]], typer.Option("--results", help="saved checker results (JSON); "
                                                                          "repeat for several files")] = None,
    inventory: Annotated[Optional[Path], typer.Option(help="run the checker on the inventory's clusters")] = None,
    cluster: Annotated[Optional[list[str]], typer.Option(help="only these clusters of the inventory")] = None,
    install_module: Annotated[bool, typer.Option(help="install AzStackHci.EnvironmentChecker where missing")] = False,
    remediate: Annotated[Optional[list[str]], typer.Option(help="allow a remediation step: features, bitlocker, "
                                                                "registry, network-atc; after the upgrade "
                                                                "bitlocker-resume (repeatable)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write readiness.csv and readiness.parquet here")] = None,
) -> None:
    """Readiness for the solution upgrade: 0 when nothing blocks, 1 when a Critical check fails, 2 when the input
    cannot be read. With --results, each file counts as one cluster named after the file."""
    from hciupgrade.readiness.remediation import STEPS, guidance
    from hciupgrade.readiness.results import read_file
    from hciupgrade.readiness.summary import FrameBuilder, cluster_table, decide, failures, nodes_by_check

    if bool(results) == bool(inventory):
        err.print("[red]give --results FILE... or --inventory FILE[/]")
        raise typer.Exit(2)
    bad = [s for s in remediate or [] if s not in STEPS]
    if bad:
        err.print(f"[red]--remediate: {bad[0]!r} is not a step; allowed: {', '.join(STEPS)}[/]")
        raise typer.Exit(2)
    problems: list[str] = []
    notes: dict[str, dict[str, str]] = {}
    if results:
        builder = FrameBuilder()
        for path in results:
            rows, file_problems = read_file(path)
            builder.extend(rows, path.stem)
            problems += [str(p) for p in file_problems]
        df = builder.frame()
    else:
        from flows.locking import embedded_settings
        from flows.readiness import readiness
        from hciupgrade.models import InputError, load_inventory

        try:
            load_inventory(inventory)
        except InputError as e:
            err.print(f"[red]{e}[/]")
            raise typer.Exit(2) from None
        with embedded_settings():
            outcome = readiness(inventory=str(inventory), clusters=cluster, install_module=install_module,
                                remediate_steps=remediate, out_dir=str(out) if out else None)
        builder = FrameBuilder()
        for row in outcome["records"]:
            builder.add(row, row.pop("cluster"))
        df = builder.frame()
        problems += outcome["problems"]
        notes = outcome["notes"]
        for step in outcome["remediated"]:
            make_console().print(f"remediated {step['node']}: {step['step']}: {step['detail']}")
    console = make_console()
    for problem in problems:
        err.print(f"[yellow]not understood:[/] {problem}")
    if df.empty:
        err.print("[red]no result record could be read[/]")
        raise typer.Exit(2)
    if out and results:
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "readiness.csv", index=False)
        df.to_parquet(out / "readiness.parquet", index=False)
    decision = decide(df)
    summary = Table(title="Readiness per cluster", box=box.SIMPLE_HEAD)
    for column in ("cluster", "ready", "blocking checks", "advised checks", "checks"):
        summary.add_column(column)
    for name, row in decision.iterrows():
        summary.add_row(str(name), "[green]yes[/]" if row.ready else "[red]no[/]", str(row.blocking_checks),
                        str(row.advised_checks), str(row.checks))
    console.print(summary)
    if len(decision) == 1:
        grid = nodes_by_check(df, str(decision.index[0]))
        table = Table(title="Checks by node", box=box.SIMPLE_HEAD)
        table.add_column("check")
        for column in grid.columns:
            table.add_column(str(column))
        for check, row in grid.iterrows():
            table.add_row(str(check), *[{"SUCCESS": "[green]ok[/]", "": ""}.get(v, f"[red]{v}[/]")
                                        for v in row.tolist()])
        console.print(table)
    else:
        console.print(_frame_table(cluster_table(df).reset_index(), "Checks per cluster, by severity and status"))
    shown_cluster = None
    for _, row in failures(df).iterrows():
        if row["cluster"] != shown_cluster:  # the cluster's name once, above its findings
            shown_cluster = row["cluster"]
            console.print(f"[bold]{shown_cluster}[/]")
        _, text = guidance(str(row["name"]))
        colour = {"CRITICAL": "red", "WARNING": "yellow"}.get(str(row["severity"]), "white")
        console.print(f"  [{colour}]{row['severity']}[/] {row['node']}: {row['title']} ({row['name']}): "
                      f"{row['detail'] or row['remediation']}\n      fix: {text}")
        pool = notes.get(str(row["cluster"]), {}).get("pool")
        if pool and "Storage" in str(row["name"]):
            console.print(f"    {pool}")
    code = 0 if decision["ready"].all() else 1
    raise typer.Exit(2 if problems else code)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
