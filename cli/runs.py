"""A run's start and end as the command sees them: its first record before Prefect starts, records left in a
spool when the store did not answer, the flow run's state set late when Prefect's API failed at the end, and the
dry run (preflight, scan and plan without Prefect)."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console

from cli.inputs import err
from cli.render import print_dry_run
from hciupgrade.records import new_run_id


def announce(run_id: str, cluster: str) -> None:
    """The run's first record event, written before Prefect starts (it takes seconds): `status` says
    RunInProgress from the moment the command runs."""
    from hciupgrade.records import RunRecorder
    from hciupgrade.records.store import host_id

    RunRecorder(run_id, cluster).emit(None, "run", "running", stage="starting", pid=os.getpid(), host=host_id())


def settle_records() -> None:
    """A run that ended while its record store was down leaves events in its spool: wait for the store (two
    minutes at most), or say where they wait."""
    from hciupgrade.records.store import open_store

    left = open_store().settle_spool(timeout=120)
    if left is not None:
        err.print(f"[yellow]warning:[/] the record store does not answer: this run's last events wait in {left}; "
                  "the next run on this machine writes them")


def late_state(run_id: str, error: Exception) -> None:
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


def preview_run(target: Any, options: Any, console: Console) -> dict:
    """Preflight, scan and plan without Prefect and without changing anything."""
    from flows.runtime import connect
    from hciupgrade.records import RunRecorder
    from hciupgrade.upgrade.rolling import RollingUpgrade

    client = connect(target)
    recorder = RunRecorder(new_run_id(), target.name, time_factor=target.time_factor)
    try:
        engine = RollingUpgrade.build(client, options, recorder, target.time_factor)
        outcome, pre = engine.run(dry_run=True)
    finally:
        client.close()
    print_dry_run(target.name, pre, outcome, console)
    return {**outcome.model_dump(mode="json"), "dry_run": True,
            "findings": [f.__dict__ for f in pre.findings], "scan": [r.__dict__ for r in pre.scan],
            "plan": [{"node": p.node, "position": p.position, "action": p.action, "detail": p.detail,
                      "steps": list(p.steps)}
                     for p in pre.plan]}
