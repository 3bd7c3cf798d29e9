"""The fast offline path as a Prefect flow, behind an approval of the downtime: every node's install and restart
is a task run, submitted at once (Prefect's task concurrency), under the cluster lock. The approval is the
`approval` parameter in embedded mode (`hci-upgrade offline --approve --reason`), a typed pause on a server."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows.ghosts import bury_ghosts
from flows.locking import cluster_lock
from flows.rolling_upgrade import UpgradeFailed
from flows.runtime import (
    ApprovalForm,
    connect,
    embedded,
    narrate_to_run_log,
    pause_for_approval,
    run_name,
    tag_this_run,
)
from hciupgrade.clock import ClusterClock
from hciupgrade.models import Approval, RunOptions, load_inventory
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.upgrade.offline import OfflineOutcome, OfflineUpgrade

ACTIONS: dict[str, Callable[[str], Any]] = {}  # the live action of a phase, looked up by the task


class DowntimeApproval(ApprovalForm):
    """The form the Prefect UI shows before the offline path takes the cluster down."""

    take_the_cluster_down: bool = Field(False, description="stop every VM and the cluster, update every node at once")


@task(name="offline-node", task_run_name="{phase}-{node}", cache_policy=NO_CACHE)
def node_action(key: str, phase: str, node: str) -> Any:
    return ACTIONS[key](node)


def prefect_parallel(run_id: str):  # noqa: ANN201 - an hciupgrade.upgrade.offline.Parallel
    def parallel(phase: str, action: Callable[[str], Any], nodes: list[str]) -> dict[str, Any]:
        key = f"{run_id}/{phase}"
        ACTIONS[key] = action
        try:
            futures = {node: node_action.submit(key, phase, node) for node in nodes}
            # a failed task run gives back its exception, which the offline path reads per node
            return {node: future.result(raise_on_failure=False) for node, future in futures.items()}
        finally:
            ACTIONS.pop(key, None)

    return parallel


@flow(name="offline-upgrade", flow_run_name=run_name("offline"), log_prints=True)
def offline_upgrade(inventory: str, cluster: str | None = None, options: RunOptions | None = None,
                    approval: Approval | None = None, wait_for_approval: bool | None = None) -> dict:
    options = options or RunOptions()
    target = load_inventory(inventory).cluster(cluster)
    options = options.check_against(target)
    tag_this_run("hci-upgrade", f"cluster:{target.name}")
    recorder = RunRecorder(new_run_id(), target.name, time_factor=target.time_factor)
    narrate_to_run_log(recorder)
    bury_ghosts(recorder)
    if approval is None and (wait_for_approval if wait_for_approval is not None else not embedded()):
        answer = pause_for_approval(DowntimeApproval.with_initial_data(
            description=f"### Take **{target.name}** down?\nEvery VM is shut down, the cluster stopped, every node "
                        "updated at once and restarted, then everything started again."),
            options.approval_timeout_minutes * 60, f"the offline path of {target.name} (every VM and the cluster "
                                                   "stop)")
        if answer.take_the_cluster_down:
            approval = Approval(approver=answer.approver, reason=answer.reason, steps=["offline"],
                                source="prefect-ui")
    if approval is None or "offline" not in approval.steps:
        recorder.emit(None, "approval", "failed", steps=["offline"], error="the downtime was not approved")
        raise UpgradeFailed(f"the offline path of {target.name} was not approved: nothing was changed")
    recorder.emit(None, "approval", "succeeded", approver=approval.approver, reason=approval.reason,
                  steps=approval.steps, source=approval.source)
    client = connect(target)
    try:
        with cluster_lock(target.name, lease_seconds=options.lock_lease_seconds) as held:
            client.own(recorder.run_id, partial(recorder.store.next_fence, target.name), held)
            outcome = OfflineUpgrade(client, options, recorder, ClusterClock(target.time_factor),
                                     prefect_parallel(recorder.run_id)).run()
    finally:
        client.close()
    publish(outcome, approval)
    if not outcome.succeeded:
        get_run_logger().error("offline upgrade of %s: %s", target.name, outcome.error)
        raise UpgradeFailed(outcome.error)
    return outcome.model_dump(mode="json")


def publish(outcome: OfflineOutcome, approval: Approval) -> None:
    lines = [f"# Offline upgrade of {outcome.cluster}: {'done' if outcome.succeeded else 'FAILED'}", "",
             f"Approved by {approval.approver} ({approval.source}): {approval.reason}.", "",
             "| node | before | after |", "|---|---|---|"]
    lines += [f"| {n} | {b} | {outcome.builds_after.get(n, '')} |" for n, b in outcome.builds_before.items()]
    if outcome.error:
        lines += ["", f"**Stopped:** {outcome.error}"]
    lines += ["", "Phases done: " + ", ".join(outcome.phases)]
    create_markdown_artifact("\n".join(lines), key=f"offline-{outcome.cluster.lower()}")
