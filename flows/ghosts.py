"""No ghost runs: a flow run whose process died (SIGKILL, a lost machine, a frozen process taken over) stays
Running in Prefect for good, and the dashboard counts it as working. Before a run of a cluster starts, the runs of
that cluster that the records show dead (not ended; the process gone on this machine, or the heartbeat stale on
another) are set Crashed in Prefect with their reason, and their record is ended as crashed, so the UI, `status`
and the notebook agree. A run that wakes up later (frozen, not dead) finds the cluster fenced against it
(hciupgrade/ownership.py) and records how it really ended."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.states import Crashed

from hciupgrade.records import RunRecorder, run_alive
from hciupgrade.records.store import RecordStore, StoreUnavailable, now_iso

log = logging.getLogger("hci_upgrade.ghosts")
UNFINISHED = ("RUNNING", "PENDING", "PAUSED", "CANCELLING", "SCHEDULED")


def dead_runs(cluster: str, store: RecordStore, *, exclude_run: str | None = None) -> list[dict[str, Any]]:
    return [r for r in store.runs(cluster=cluster, open_only=True) if r["run_id"] != exclude_run
            and not run_alive(r)]


def crash_ghost_runs(cluster: str, recorder: RunRecorder) -> list[str]:
    """Set the dead runs of this cluster Crashed in Prefect and end their records; returns their run ids."""
    store = recorder.store
    ended = []
    for run in dead_runs(cluster, store, exclude_run=recorder.run_id):
        first = store.events(run_ids=[run["run_id"]], phases=["run"])
        flow_run_id = next((e.get("flow_run_id") for e in first if e.get("flow_run_id")), None)
        where = f"{run['host']} (process {run['pid']})"
        reason = (f"the process running it on {where} died or stopped answering: last heartbeat {run['heartbeat']}; "
                  f"found by run {recorder.run_id}")
        if flow_run_id:
            _crash_flow_run(flow_run_id, reason)
        store.append({"run_id": run["run_id"], "cluster": run["cluster"], "node": None, "phase": "run",
                      "status": "crashed", "start": now_iso(), "end": now_iso(), "error": reason,
                      "found_by": recorder.run_id})
        recorder.emit(None, "note", "info", detail=f"run {run['run_id']} is dead: {reason}")
        ended.append(run["run_id"])
    return ended


def bury_ghosts(recorder: RunRecorder) -> None:
    """At the start of a flow run: its Prefect flow run id goes into its record, and the cluster's dead runs are
    set Crashed (a store that does not answer only costs the clean-up, never the run)."""
    from prefect.runtime import flow_run

    if flow_run.id:
        recorder.run_attrs["flow_run_id"] = str(flow_run.id)
    try:
        for run_id in crash_ghost_runs(recorder.cluster, recorder):
            log.warning("run %s of %s had died: its flow run is set Crashed and its record ended", run_id,
                        recorder.cluster)
    except StoreUnavailable as e:
        log.warning("dead runs of %s not looked for: %s", recorder.cluster, e)


def _crash_flow_run(flow_run_id: str, reason: str) -> None:
    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(UUID(str(flow_run_id)))
            if flow_run.state is not None and flow_run.state.type.value in UNFINISHED:
                client.set_flow_run_state(flow_run.id, Crashed(message=reason), force=True)
    except Exception as e:  # noqa: BLE001 - another server's run, or one Prefect forgot: the record still ends
        log.warning("could not set flow run %s Crashed: %s", flow_run_id, e)


ZOMBIE_AUTOMATION = "hci-upgrade: crash dead fleet-batch runs"
HEARTBEAT_SECONDS = 30  # the batch deployment's PREFECT_FLOWS_HEARTBEAT_FREQUENCY (Prefect's minimum)


def ensure_zombie_detection(missed_beats: int = 3) -> None:
    """A batch run whose worker died stays Running in Prefect for good (reference/prefect.md, "Zombie runs"), and
    the fleet waiting on it would wait for good. Prefect's documented remedy (docs "detect-zombie-flows"): the runs
    beat, and an automation sets Crashed a run that missed `missed_beats` beats. Scoped to the fleet-batch flow,
    whose deployment beats every HEARTBEAT_SECONDS: the other flows beat at Prefect's default (180 s) and must not
    be crashed at this pace. Created once per server; left as it is when it exists (an operator may have tuned it)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return
    except ValueError:
        pass  # not there yet
    Automation(
        name=ZOMBIE_AUTOMATION,
        description="A fleet-batch run that stopped beating (its worker or machine died) is set Crashed, so the "
                    "fleet hands its unfinished clusters to a new batch run (hci-upgrade, flows/ghosts.py).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": "fleet-batch"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=missed_beats * HEARTBEAT_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {missed_beats * HEARTBEAT_SECONDS} s: its process died "
                                            "(hci-upgrade's zombie detection)")],
    ).create()
