"""Finishing the procedure as Prefect flows: the cumulative update (the rolling flow again, with update=cumulative),
the post-OS steps with their approval, and the whole path as one parent flow whose stages are subflow runs.

The approval of what is irreversible comes one of two ways. In embedded mode (the CLI, where nobody can reach a
UI) it is the `approval` parameter (`--approve --reason`). On a Prefect server the flow pauses with a typed input,
which the UI shows as a form; after ApprovalTimeoutMinutes the run fails and nothing irreversible has happened.
Either way the approval (who, why, which steps, where) is in the run record and the artifacts.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State
from pydantic import Field, create_model
from pydantic.json_schema import SkipJsonSchema

from flows.ghosts import bury_ghosts
from flows.locking import cluster_lock
from flows.readiness import readiness
from flows.rolling_upgrade import UpgradeFailed, prefect_engine, rolling_upgrade, run_engine
from flows.runtime import (
    ApprovalForm,
    connect,
    embedded,
    narrate_to_run_log,
    pause_for_approval,
    run_name,
    tag_this_run,
)
from hciupgrade.models import Approval, RunOptions, load_inventory
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.upgrade.postos import PostUpgrade, PostUpgradeOutcome, levels_table, validation_summary
from tasks.node_steps import TaskChain

AWAITING_APPROVAL = "awaiting approval"


# each irreversible step's toggle: what it changes, and that it cannot be undone (every toggle starts off)
STEP_TOGGLES = {
    "functional-level": ("functional_level", "Raise the cluster functional level (Update-ClusterFunctionalLevel): "
                                             "nodes of the old OS can no longer join. Cannot be undone."),
    "storage-pool": ("storage_pool", "Update the storage pool version (Update-StoragePool): the pool can no longer "
                                     "be used by the old OS. Cannot be undone."),
    "vm-versions": ("vm_versions", "Update the listed VMs' configuration versions (Update-VMVersion; each VM is shut "
                                   "down for it): they can no longer run on the old OS. Cannot be undone."),
}


class ApprovalInput(ApprovalForm):
    """The form the Prefect UI shows when the post-OS steps wait for an approval: a toggle for each step the
    cluster still needs (`for_steps`), none switched on."""

    def approval(self) -> Approval | None:
        steps = [step for step, (name, _) in STEP_TOGGLES.items() if getattr(self, name, False)]
        return Approval(approver=self.approver, reason=self.reason, steps=steps, source="prefect-ui") if steps \
            else None

    @classmethod
    def for_steps(cls, steps: list[str]) -> type[ApprovalInput]:
        """The form with a toggle only for the steps pending: a step with nothing to do is not offered."""
        toggles: dict[str, Any] = {STEP_TOGGLES[s][0]: (bool, Field(False, description=STEP_TOGGLES[s][1]))
                                   for s in steps if s in STEP_TOGGLES}
        return create_model("ApprovalInput", __base__=cls, **toggles)


def ask_in_the_ui(timeout_minutes: float):  # noqa: ANN201 - returns PostUpgrade's Approve callable
    def approve(steps: list[str], plan: str) -> Approval | None:
        logger = get_run_logger()  # "waiting for an approval" reaches the log once, from the run record
        form = ApprovalInput.for_steps(steps).with_initial_data(
            description=f"### Approve the irreversible post-OS steps\n{plan}\n\nSwitch on what you approve: "
                        "each one cannot be undone.")
        answer = pause_for_approval(form, timeout_minutes * 60, "the irreversible post-OS steps")
        approval = answer.approval()
        if approval is None:
            logger.warning("%s approved none of the steps (%s)", answer.approver, answer.reason)
        return approval

    return approve


@flow(name="post-upgrade", flow_run_name=run_name("post-upgrade"), log_prints=True)
def post_upgrade(inventory: str, cluster: str | None = None, options: RunOptions | None = None,
                 approval: Approval | None = None, wait_for_approval: bool | None = None,
                 run_id: SkipJsonSchema[str | None] = None) -> dict:
    """The post-OS steps of one cluster. `wait_for_approval` (default: on a Prefect server) pauses for the UI's
    form; with `approval` given, that is the approval; with neither, the irreversible steps wait."""
    options = options or RunOptions()
    target = load_inventory(inventory).cluster(cluster)
    options = options.check_against(target)
    tag_this_run("hci-upgrade", f"cluster:{target.name}")
    if wait_for_approval is None:
        wait_for_approval = approval is None and not embedded()
    client = connect(target)
    recorder = RunRecorder(run_id or new_run_id(), target.name, time_factor=target.time_factor)
    narrate_to_run_log(recorder)
    bury_ghosts(recorder)

    def given(steps: list[str], plan: str) -> Approval | None:
        return approval

    def restart(nodes: list[str]) -> bool:
        restart_options = options.model_copy(update={"restart_only": nodes})
        return run_engine(*prefect_engine(target, restart_options)).succeeded

    try:
        with cluster_lock(target.name, lease_seconds=options.lock_lease_seconds) as held:
            client.own(recorder.run_id, partial(recorder.store.next_fence, target.name), held)
            approve = ask_in_the_ui(options.approval_timeout_minutes) if wait_for_approval else given
            steps = TaskChain(recorder.run_id, target.name, target.time_factor)
            outcome = PostUpgrade(client, options, recorder, approve, restart, steps.phase).run()
    finally:
        client.close()
    publish(outcome)
    if not outcome.succeeded:
        if not outcome.awaiting_approval or outcome.vms and any(v.result == "failed" for v in outcome.vms):
            get_run_logger().error("post-upgrade of %s: %s", target.name, outcome.error)
            raise UpgradeFailed(outcome.error)
        # not done what it was asked: Failed (the dashboard counts it), the outcome kept as the result
        return not_done(f"{AWAITING_APPROVAL}: {', '.join(outcome.awaiting_approval)}",
                        outcome.model_dump(mode="json"))
    return outcome.model_dump(mode="json")


def not_done(message: str, result: dict) -> State:
    """A run that stopped short of what it was asked without an error (an approval not given): a Failed state
    whose message says what waits, its result still the outcome (the CLI reads it for its exit code)."""
    get_run_logger().warning(message)
    return Failed(message=message, data=result)


def outcome_of(state: State) -> dict:
    """A stage's result, whether it ended done or not done (`not_done`); its exception if it failed."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def publish(outcome: PostUpgradeOutcome) -> None:
    key = f"post-upgrade-{outcome.cluster.lower()}"
    table = levels_table(outcome.before, outcome.after)
    if not table.empty:
        create_table_artifact(table.to_dict(orient="records"), key=f"{key}-levels",
                              description="Functional level, pool version, builds and VM versions before and after")
    if outcome.validation:
        create_table_artifact(validation_summary(outcome.validation).astype(str).to_dict(orient="records"),
                              key=f"{key}-validation", description="Test-Cluster, per category")
    lines = [f"# Post-OS steps of {outcome.cluster}: "
             f"{'done' if outcome.succeeded else AWAITING_APPROVAL if outcome.awaiting_approval else 'FAILED'}", ""]
    if outcome.approval:
        a = outcome.approval
        lines += [f"**Approved** by {a.approver} ({a.source}): {a.reason}. Steps: {', '.join(a.steps)}.", ""]
    if outcome.awaiting_approval:
        lines += [f"**Awaiting approval:** {', '.join(outcome.awaiting_approval)}", ""]
    if outcome.error:
        lines += [f"**Stopped:** {outcome.error}", ""]
    lines += [f"- {'ok' if f['ok'] else 'BLOCKS' if f['blocking'] else 'warning'}: {f['check']}: {f['detail']}"
              for f in outcome.findings]
    create_markdown_artifact("\n".join(lines), key=f"{key}-summary")


@flow(name="finish", flow_run_name=run_name("finish"), log_prints=True)
def finish(inventory: str, cluster: str | None = None, options: RunOptions | None = None,
           approval: Approval | None = None, wait_for_approval: bool | None = None) -> dict:
    """The cumulative update on every node (rolling, through the same engine and gates), then the post-OS steps."""
    options = options or RunOptions()
    lcu = rolling_upgrade(inventory=inventory, cluster=cluster, options=lcu_options(options))
    if lcu.get("window_ended"):  # the window closed during the cumulative update: the post-OS steps wait
        return {"cumulative_update": lcu, "post_upgrade": None}
    post = post_upgrade(inventory=inventory, cluster=cluster, options=options, approval=approval,
                        wait_for_approval=wait_for_approval, return_state=True)
    result = {"cumulative_update": lcu, "post_upgrade": outcome_of(post)}
    return not_done(str(post.message), result) if post.is_failed() else result


def lcu_options(options: RunOptions) -> RunOptions:
    data = options.model_dump(by_alias=False, exclude={"target_build", "update"})
    return RunOptions(**data, update="cumulative")


@flow(name="full-upgrade", flow_run_name=run_name("full-upgrade"), log_prints=True)
def full_upgrade(inventory: str, cluster: str | None = None, options: RunOptions | None = None,
                 approval: Approval | None = None, wait_for_approval: bool | None = None) -> dict:
    """The whole path for one cluster, each stage a subflow run: feature update, cumulative update, post-OS steps,
    readiness. Every stage starts by reading the cluster, so a rerun (a later window, after an approval) resumes
    at the stage where it stopped: finished nodes and raised levels are skipped."""
    options = options or RunOptions()
    target = load_inventory(inventory).cluster(cluster)
    feature = rolling_upgrade(inventory=inventory, cluster=target.name, options=options)
    if feature.get("window_ended"):  # the next window's run resumes here
        return {"feature_update": feature}
    finished = finish(inventory=inventory, cluster=target.name, options=options, approval=approval,
                      wait_for_approval=wait_for_approval, return_state=True)
    rest = outcome_of(finished)
    if finished.is_failed():  # the post-OS steps await an approval: the next run resumes there
        return not_done(str(finished.message), {"feature_update": feature, **rest})
    if rest["post_upgrade"] is None:
        return {"feature_update": feature, **rest}
    ready = readiness(inventory=inventory, clusters=[target.name])
    return {"feature_update": feature, **rest, "readiness": ready}
