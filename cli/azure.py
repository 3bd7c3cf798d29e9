"""The Azure side's commands: `solution` (the solution upgrade) and `updates` (the solution updates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.inputs import EXIT_AWAITING_APPROVAL, bad_input
from cli.render import frame_table, make_console, print_solution


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

    from flows.runtime import embedded_settings
    from flows.solution import solution_upgrade
    from hciupgrade.models import Approval, InputError, load_inventory

    with bad_input():
        target = load_inventory(inventory).cluster(cluster)
        if target.azure is None:
            raise InputError(f"cluster {target.name} has no azure section in {inventory}")
        from hciupgrade.targets import release

        undocumented = release(target.target_release).solution_undocumented
        if undocumented:
            raise InputError(f"cluster {target.name}: {undocumented}")
        if approve and not reason:
            raise InputError("--approve needs --reason (a change ticket): the approval is recorded")
        if assign_roles and not approve:
            raise InputError("--assign-roles needs --approve --reason: role assignments are changes in the tenant")
        problems = target.azure.upgrade_problems([n.name for n in target.nodes])
        if problems:
            raise InputError(f"{inventory}, cluster {target.name}: the solution upgrade needs " + "; ".join(problems))
        target.azure.credential.build()  # a missing variable is bad input, before anything is read
    approval = Approval(approver=getpass.getuser(), reason=reason or "", steps=["solution-upgrade"],
                        source="cli") if approve else None
    with embedded_settings():
        result = solution_upgrade(inventory=str(inventory), cluster=target.name, approval=approval,
                                  validate_only=validate_only, resume=resume, wait_for_approval=False,
                                  assign_roles=assign_roles)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_solution(result, make_console())
    if result["error"]:
        raise typer.Exit(1)
    raise typer.Exit(EXIT_AWAITING_APPROVAL if result["awaiting_approval"] else 0)


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

    from flows.runtime import embedded_settings
    from flows.solution import solution_updates
    from hciupgrade.models import InputError, load_inventory

    with bad_input():
        parsed = load_inventory(inventory)
        names = [parsed.cluster(c).name for c in cluster] if cluster else [c.name for c in parsed.clusters if c.azure]
        if not names:
            raise InputError(f"no cluster of {inventory} has an azure section")
        for name in names:
            if parsed.cluster(name).azure is None:
                raise InputError(f"cluster {name} has no azure section")
    with embedded_settings():
        result = solution_updates(inventory=str(inventory), clusters=names, apply=apply)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        console = make_console()
        console.print(frame_table(pd.DataFrame(result["updates"]).fillna(""), "Solution updates"))
        if len({u["cluster"] for u in result["updates"]}) > 1:
            console.print(frame_table(pd.DataFrame(result["fleet"]), "Across the fleet: clusters per state"))
        for name, applied in result["applied"].items():
            console.print(f"{name}: {applied['update']} {applied['done'] or 'not applied'}: "
                          f"{applied['state'] or ''} {applied['error'] or ''}")
    raise typer.Exit(1 if any(a["error"] for a in result["applied"].values()) else 0)
