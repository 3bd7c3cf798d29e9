"""The `hci-upgrade` commands. Each checks its input first (cli.inputs), starts its flow, and draws the result
(cli.render); the simulator's commands live in cli.simulate."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from cli import azure, simulate
from cli.inputs import (
    EXIT_AWAITING_APPROVAL,
    EXIT_WINDOW_ENDED,
    bad_input,
    err,
    refuse,
    run_inputs,
    upfront_approval,
)
from cli.render import (
    LiveView,
    builds_frame,
    frame_table,
    make_console,
    print_finish,
    print_fleet,
    print_status,
    run_outcome,
    summary_table,
)
from cli.runs import announce, late_state, preview_run, settle_records
from hciupgrade.records import new_run_id

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Upgrade Azure Stack HCI clusters from 22H2 to 23H2, node by node, as Prefect flows.")


@app.callback()
def _commands() -> None:
    """Commands: demo, upgrade, status, report, readiness, sim serve."""


app.command()(simulate.demo)
app.add_typer(simulate.sim_app, name="sim")


@app.command()
def upgrade(
    inventory: Annotated[Path, typer.Option(help="inventory file (YAML)")],
    cluster: Annotated[Optional[str], typer.Option(help="the cluster to upgrade (optional with one cluster)")] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML), with CAU's names")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print preflight, scan and plan; change nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the outcome as JSON")] = False,
    approve: Annotated[Optional[list[str]], typer.Option(
        "--approve", help="approve an irreversible step the target release asks before the first node: "
                          "cloud-management (the 24H2 path removes that cluster group)")] = None,
    reason: Annotated[Optional[str], typer.Option(help="why (a change ticket): required with --approve")] = None,
) -> None:
    """Upgrade one cluster of an inventory, node by node. Exit 0 when it ends upgraded, 1 when not, 2 for bad
    input. Run it again after a crash: it picks up where the cluster is."""
    target, run_options = run_inputs(inventory, cluster, options)
    if approve:
        run_options = run_options.model_copy(update={"approval": upfront_approval(approve, reason)})
    for warning in target.warnings():
        err.print(f"[yellow]warning:[/] {warning}")
    console = err if json_out else make_console()
    if dry_run:
        outcome = preview_run(target, run_options, console)
        if json_out:
            print(json.dumps(outcome, indent=2))
        raise typer.Exit(0 if outcome["succeeded"] else 1)
    from flows.rolling_upgrade import rolling_upgrade
    from flows.runtime import embedded_settings
    run_id = new_run_id()
    announce(run_id, target.name)
    view = LiveView(run_id, console) if not json_out else None
    thread = view.start() if view else None
    with embedded_settings():
        try:
            state = rolling_upgrade(inventory=str(inventory), cluster=target.name, options=run_options,
                                    run_id=run_id, return_state=True)
        except Exception as e:  # the cluster's work is done; Prefect could not record its end
            state = late_state(run_id, e)
    if view and thread:
        view.stop(thread)
    settle_records()
    outcome = run_outcome(run_id)
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

    from flows.runtime import connect
    from hciupgrade.survey import read_only, survey

    target, run_options = run_inputs(inventory, cluster, options)
    client = read_only(connect(target))
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


@app.command("fleet")
def fleet_cmd(
    inventory: Annotated[Path, typer.Option(help="fleet inventory (YAML): clusters with tags, windows, waves")],
    tag: Annotated[Optional[list[str]], typer.Option(help="only clusters with this tag, key=value (repeatable)")
                   ] = None,
    options: Annotated[Optional[Path], typer.Option(help="run options (YAML), with CAU's names")] = None,
    deployment: Annotated[Optional[str], typer.Option(help="with a Prefect server: the rolling-upgrade deployment "
                                                           "each cluster runs as (workers take them)")] = None,
    batch_deployment: Annotated[Optional[str], typer.Option(help="large fleets: the fleet-batch deployment whose "
                                                                 "runs host --clusters-per-run clusters")] = None,
    clusters_per_run: Annotated[int, typer.Option(min=1, max=500, help="clusters in one batch run")] = 25,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the waves and each cluster's window and fit; "
                                                            "change nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the plan or the result as JSON")] = False,
) -> None:
    """A fleet in waves: canaries first, at most K clusters at once, each inside its maintenance window and only
    when its next node fits. Exit 0 when every selected cluster ends upgraded, 1 when one fails or the fleet
    stops, 4 when windows ended first (run again), 2 for bad input."""
    from hciupgrade.fleet import fleet_plan
    from hciupgrade.models import InputError, load_inventory, load_options

    with bad_input():
        fleet = load_inventory(inventory)
        run_options = load_options(options)
        selected = fleet.select(tag)
        if not selected:
            raise InputError(f"--tag: no cluster of {inventory} carries {', '.join(tag or [])}")
        for cluster in selected:
            run_options.check_against(cluster)
            cluster.credential.resolve(secret_block=lambda name: "")
    waves, fits = fleet_plan(fleet, tag, staged=run_options.stages)
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
    from flows.runtime import embedded_settings

    with embedded_settings():
        state = fleet_upgrade(inventory=str(inventory), tags=tag, options=run_options,
                              cluster_deployment=deployment, batch_deployment=batch_deployment,
                              clusters_per_run=clusters_per_run, return_state=True)
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    if not isinstance(summary, dict):
        err.print(f"[red]The fleet run failed:[/] {state.message}")
        raise typer.Exit(1)
    if json_out:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_fleet(summary, console)
    states = {r["state"] for r in summary["clusters"]}
    if summary["stopped"] or "failed" in states:
        raise typer.Exit(1)
    raise typer.Exit(EXIT_WINDOW_ENDED if states - {"upgraded"} else 0)


app.command("solution")(azure.solution_cmd)
app.command("updates")(azure.updates_cmd)


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
    target, run_options = run_inputs(inventory, cluster, options, require="--reason: an approval needs a reason (a "
                                  "change ticket, a window), e.g. --reason CHG-1234" if reason_missing else None)
    approval = Approval(approver=getpass.getuser(), reason=reason.strip(), source="cli") if approve and reason \
        else None
    from flows.finish import finish
    from flows.runtime import embedded, embedded_settings

    console = err if json_out else make_console()
    with embedded_settings():  # on a Prefect server, without --approve, the run pauses for the UI's form
        state = finish(inventory=str(inventory), cluster=target.name, options=run_options, approval=approval,
                       wait_for_approval=approval is None and not embedded(), return_state=True)
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
        print_finish(result, console)
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

    from flows.runtime import embedded, embedded_settings
    from hciupgrade.models import Approval

    approved = approve and (reason or "").strip()
    in_the_ui = not approved and not approve and not embedded()  # a server: its UI's form is the approval
    target, run_options = run_inputs(inventory, cluster, options, require=None if approved or in_the_ui else (
        "--approve --reason: the offline path takes the whole cluster down; it runs only with an approval and its "
        "reason, e.g. --approve --reason 'CHG-1234 window Sat 02:00' (or, with PREFECT_API_URL set, approve in "
        "the Prefect UI)"))
    from flows.offline import offline_upgrade

    approval = None if in_the_ui else \
        Approval(approver=getpass.getuser(), reason=str(reason).strip(), steps=["offline"], source="cli")
    console = err if json_out else make_console()
    console.print(f"Offline upgrade of [bold]{target.name}[/], " + (
        "awaiting its approval in the Prefect UI" if approval is None else
        f"approved by {approval.approver}: {approval.reason}"))
    with embedded_settings():
        state = offline_upgrade(inventory=str(inventory), cluster=target.name, options=run_options,
                                approval=approval, wait_for_approval=in_the_ui, return_state=True)
    result = state.result(raise_on_failure=False)
    if json_out:
        print(json.dumps(result if isinstance(result, dict) else {"succeeded": False, "error": str(result)},
                         indent=2))
    elif isinstance(result, dict):
        console.print(frame_table(builds_frame(result), "Offline upgrade"))
    else:
        console.print(f"[red]Stopped:[/] {result}")
    raise typer.Exit(0 if isinstance(result, dict) and result.get("succeeded") else 1)


@app.command()
def status(cluster: Annotated[str, typer.Argument(help="the cluster's name")]) -> None:
    """The latest run on a cluster, like Get-CauRun: state, run id, machine, start, current node, each node's
    latest step. Dry runs and refused runs are not taken as the latest run."""
    from hciupgrade.records.reports import run_status

    current = run_status(cluster)
    print_status(cluster, current, make_console())


@app.command()
def report(run: Annotated[Optional[str], typer.Argument(help="run id (default: the latest run)")] = None,
           cluster: Annotated[Optional[str], typer.Option(help="the latest run of this cluster")] = None) -> None:
    """A run's report, like Get-CauReport: per node the builds before and after, result, attempts, start and end,
    time in each phase and the error; the same columns as the demo's table."""
    from cli.render import summary_table
    from hciupgrade.records.reports import latest_run_id, run_report

    run_id = run or latest_run_id(cluster)
    found = run_report(run_id) if run_id else None
    if found is None:
        refuse(f"[red]no run {run_id or ''} in the records[/]" + (f" of {cluster}" if cluster else ""))
    header, df = found
    label = f" ({header['aside']})" if header["aside"] else ""
    ended = f", ended {header['ended'][:19]} UTC: {header['status']}" if header["ended"] else ", not ended"
    console = make_console()
    target = f" to {header['target']}" if header.get("target") else ""
    console.print(f"Run {run_id}{label} on {header['cluster']}{target} from {header['host'] or 'unknown host'}: "
                  f"started {header['started'][:19]} UTC{ended}")
    console.print(summary_table(run_id))  # with Cluster-Aware Updating's own report for a run of Engine cau
    for node, error in zip(df["node"], df["error"], strict=False):
        if isinstance(error, str) and error:
            console.print(error if error.startswith(f"{node}:") else f"[red]{node}[/]: {error}")


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
    from hciupgrade.records.store import older_than as cutoff
    from hciupgrade.records.store import open_store

    if older_than < 0:
        refuse("[red]--older-than: give a number of days, 0 or more[/]")
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
    from hciupgrade.records.store import open_store

    missing = [f for f in files if not f.is_file()]
    if missing:
        refuse(f"[red]{missing[0]}: no such file[/]")
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
    from hciupgrade.readiness.remediation import REMEDIATIONS, guidance
    from hciupgrade.readiness.results import read_file
    from hciupgrade.readiness.summary import FrameBuilder, cluster_table, decide, failures, nodes_by_check

    if bool(results) == bool(inventory):
        refuse("[red]give --results FILE... or --inventory FILE[/]")
    bad = [s for s in remediate or [] if s not in REMEDIATIONS]
    if bad:
        refuse(f"[red]--remediate: {bad[0]!r} is not a remediation; allowed: {', '.join(REMEDIATIONS)}[/]")
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
        from flows.readiness import readiness
        from flows.runtime import embedded_settings
        from hciupgrade.models import InputError, load_inventory

        with bad_input(InputError):
            fleet = load_inventory(inventory)
        from hciupgrade.targets import release, support_notes

        for note in {n for c in fleet.clusters for n in support_notes(release(c.target_release))}:
            err.print(f"[yellow]note:[/] {note}")
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
        refuse("[red]no result record could be read[/]")
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
        console.print(frame_table(cluster_table(df).reset_index(), "Checks per cluster, by severity and status"))
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
