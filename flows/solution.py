"""The solution upgrade and the solution updates through Azure, as Prefect flows: prerequisites read and reported
first, Validate, an approval (a typed form in the UI on a server, --approve --reason in the CLI), Deploy, the step
tree followed with a progress artifact and step-level logs; a rerun follows a Deploy that is still running."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from flows.readiness import check_cluster
from flows.runtime import ApprovalForm, embedded, narrate_to_run_log, pause_for_approval, run_name
from hciupgrade.azure.arm import ArmClient, ArmError
from hciupgrade.azure.operations import Budget, Ledger, Stalled, verdict
from hciupgrade.azure.resources import DeploymentSetting, Step, UpdateRun
from hciupgrade.azure.solution import (
    AzureCluster,
    fleet_updates,
    reported_tree,
    step_table,
    tree_progress,
    updates_table,
)
from hciupgrade.models import Approval, ClusterInventory, InputError, load_inventory
from hciupgrade.readiness.summary import FrameBuilder, blocking_checks
from hciupgrade.records import RunRecorder, new_run_id


class SolutionApprovalInput(ApprovalForm):
    """The form the Prefect UI shows before the Deploy."""

    deploy: bool = Field(False, description="start the solution upgrade (hours; no rollback is documented)")


def azure_cluster(target: ClusterInventory, recorder: RunRecorder | None = None, *, poll_seconds: float = 60,
                  stall_minutes: float = 180) -> AzureCluster:
    """The cluster's Azure side; with `recorder`, its submits are recorded for a rerun to follow."""
    if target.azure is None:
        raise InputError(f"cluster {target.name} has no azure section in the inventory: the solution upgrade "
                         "needs its subscription, resource group, key vault and IP pool")
    arm = ArmClient(target.azure.endpoint, credential=target.azure.credential.build(), scope=target.azure.scope,
                    time_factor=target.time_factor)
    return AzureCluster(arm, target.azure, target.name, [n.name for n in target.nodes], ledger=Ledger(recorder),
                        budget=Budget(poll_s=poll_seconds, stall_s=stall_minutes * 60))


def readiness_blockers(inventory: str, cluster: str) -> list[str]:
    """The environment checker's Critical failures on the cluster now (the readiness issue's decision)."""
    result = check_cluster(inventory, cluster, False)
    builder = FrameBuilder()
    builder.extend(result["rows"], cluster)
    return blocking_checks(builder.frame())


class TreeWatcher:
    """Logs each step of a tree as it starts, ends or fails, and moves the progress artifact."""

    def __init__(self, recorder: RunRecorder, phase: str, progress_key: str | None) -> None:
        self.recorder, self.phase, self.seen = recorder, phase, {}
        self.progress = create_progress_artifact(0.0, key=progress_key) if progress_key else None

    def __call__(self, root: Step) -> None:
        for _, path, step in root.walk():
            if step.status and self.seen.get(path) != step.status and path != root.name:
                self.seen[path] = step.status
                self.recorder.emit(None, self.phase, "running" if step.status == "InProgress" else
                                   ("failed" if step.status == "Error" else "succeeded"), step=path,
                                   error="; ".join(step.exception) or step.error_message or None)
        if self.progress:
            update_progress_artifact(self.progress, 100.0 * min(tree_progress(root), 0.99))


def _tree(setting: DeploymentSetting | None, which: str) -> Step:
    return reported_tree(setting, which) or Step(name=which)


@flow(name="solution-upgrade", flow_run_name=run_name("solution"))
def solution_upgrade(inventory: str, cluster: str | None = None, approval: Approval | None = None,
                     validate_only: bool = False, resume: bool = False, wait_for_approval: bool | None = None,
                     check_readiness: bool = True, assign_roles: bool = False, poll_seconds: float = 60,
                     stall_minutes: float = 180, run_id: SkipJsonSchema[str | None] = None) -> dict[str, Any]:
    """The solution upgrade of one cluster. Without an approval it stops after Validate (awaiting approval), or
    on a Prefect server pauses for the approval form (`wait_for_approval`, default: on a server). A Deploy that
    failed is resumed in Deploy mode (`resume`, approved), never validated again on a half-upgraded cluster."""
    logger = get_run_logger()
    target = load_inventory(inventory).cluster(cluster)
    recorder = RunRecorder(run_id or new_run_id(), target.name, time_factor=target.time_factor)
    az = azure_cluster(target, recorder, poll_seconds=poll_seconds, stall_minutes=stall_minutes)
    narrate_to_run_log(recorder)
    recorder.emit(None, "run", "running", kind="solution-upgrade")
    result: dict[str, Any] = {"run_id": recorder.run_id, "cluster": target.name, "succeeded": False,
                              "stage": "prerequisites", "error": None, "prerequisites": [], "validation": [],
                              "deployment": [], "awaiting_approval": False, "deploy": None}

    def end(error: str | None, **status: Any) -> dict[str, Any]:
        result.update(error=error, succeeded=error is None and not result["awaiting_approval"], **status)
        recorder.emit(None, "run", "succeeded" if error is None else "failed", kind="solution-upgrade",
                      error=error, outcome=result)
        az.arm.close()
        if error:
            logger.error("solution upgrade of %s: %s", target.name, error)
        return result

    def approved() -> Approval | None:
        if approval is None and (wait_for_approval if wait_for_approval is not None else not embedded()):
            answer = pause_for_approval(SolutionApprovalInput.with_initial_data(
                description=f"### Start the solution upgrade of {target.name}\nValidation passed. The Deploy "
                            "takes hours and has no documented rollback."), 24 * 3600,
                f"the solution upgrade's Deploy on {target.name}")
            if answer.deploy:
                return Approval(approver=answer.approver, reason=answer.reason, steps=["solution-upgrade"],
                                source="prefect-ui")
        return approval

    assert target.azure is not None
    problems = target.azure.upgrade_problems([n.name for n in target.nodes])
    if assign_roles and approval is None:
        problems.append("assign_roles: role assignments are changes in the tenant: give an approval with it "
                        "(--approve --reason)")
    if problems:
        return end("bad input, nothing was read or written: " + "; ".join(problems), stage="input")
    try:
        current = az.setting()
        deployment = reported_tree(current, "deployment_status")
        deploy_status = verdict(deployment.status) if deployment else None
        following = az.ledger.pending("deploy", az.settings_key) is not None or deploy_status == "running"
        resuming = deploy_status == "failed" and current is not None and \
            current.properties.deployment_mode == "Deploy"
        if deploy_status == "succeeded" and current is not None and current.properties.deployment_mode == "Deploy" \
                and not following:
            logger.info("the solution upgrade of %s is deployed already", target.name)
            return end(None, stage="deployed", deploy="already deployed")
        if following:
            logger.warning("a Deploy is running on %s: following it (never submitting a second one)", target.name)
        elif resuming and not resume:
            return end("the last Deploy failed: fix its cause, then resume (hci-upgrade solution --resume), as the "
                       "portal's resume does", stage="deploy failed")
        elif not resuming:
            blockers = readiness_blockers(inventory, target.name) if check_readiness else []
            prereqs = az.prerequisites(blockers, assign_roles=assign_roles)
            result["prerequisites"] = [p.__dict__ for p in prereqs]
            for p in prereqs:
                recorder.emit(None, "solution-prerequisite", "succeeded" if p.ok else "failed", check=p.check,
                              detail=p.detail)
            create_table_artifact([{"check": p.check, "ok": p.ok, "detail": p.detail} for p in prereqs],
                                  key=f"solution-{target.name.lower()}-prerequisites",
                                  description=f"Solution-upgrade prerequisites of {target.name}")
            missing = [f"{p.check}: {p.detail}" for p in prereqs if not p.ok]
            if missing:
                return end("prerequisites not met: " + "; ".join(missing))
            if assign_roles:
                assert approval is not None
                made = az.assign_roles()
                recorder.emit(None, "solution-roles", "succeeded", assigned=made, approver=approval.approver,
                              reason=approval.reason)
                logger.info("role assignments made: %s", ", ".join(made) or "none missing")
            result["stage"] = "validate"
            watcher = TreeWatcher(recorder, "solution-validate", None)
            setting = az.validate(current, on_poll=lambda s: watcher(_tree(s, "validation_status")))
            tree = _tree(setting, "validation_status")
            watcher(tree)
            table = step_table(tree)
            result["validation"] = table.drop(columns=["path"]).to_dict(orient="records")
            create_table_artifact(table.drop(columns=["path"]).fillna("").to_dict(orient="records"),
                                  key=f"solution-{target.name.lower()}-validation",
                                  description=f"Validation of the solution upgrade of {target.name}")
            if verdict(tree.status) != "succeeded":
                failing = tree.failing()
                return end(f"validation {verdict(tree.status)} ({tree.status}): "
                           + (f"{failing.name}: {'; '.join(failing.exception)}" if failing
                              else "no failing step reported"))
            if validate_only:
                return end(None, stage="validated")
            current = setting
        if not following:
            chosen = approved()
            if chosen is None:
                result["awaiting_approval"] = True
                recorder.emit(None, "approval", "failed", error="the Deploy waits for an approval")
                return end(None, stage="awaiting approval")
            recorder.emit(None, "approval", "succeeded", approver=chosen.approver, reason=chosen.reason,
                          steps=list(chosen.steps), source=chosen.source)
        result["stage"] = "deploy"
        watcher = TreeWatcher(recorder, "solution-deploy", f"solution-{target.name.lower()}")
        setting, done = az.deploy(current, on_poll=lambda s: watcher(_tree(s, "deployment_status")), resume=resume)
        tree = _tree(setting, "deployment_status")
        watcher(tree)
        result["deploy"] = done
        result["deployment"] = step_table(tree).drop(columns=["path"]).to_dict(orient="records")
        if verdict(tree.status) != "succeeded":
            failing = tree.failing()
            return end(f"deployment {verdict(tree.status)} ({tree.status}) at {failing.name if failing else '?'}: "
                       f"{'; '.join(failing.exception) if failing else ''} (fix the cause, then resume: "
                       "hci-upgrade solution --resume)", stage="deploy failed")
        if watcher.progress:
            update_progress_artifact(watcher.progress, 100.0)
        create_markdown_artifact(f"# Solution upgrade of {target.name}: succeeded\nDeploy {done}; "
                                 f"{len(tree.steps)} steps.", key=f"solution-{target.name.lower()}-summary")
        return end(None, stage="deployed")
    except Stalled as e:
        return end(str(e), stage="stalled")
    except ArmError as e:
        return end(str(e))


@flow(name="solution-updates", flow_run_name=run_name("updates"))
def solution_updates(inventory: str, clusters: list[str] | None = None, apply: str | None = None,
                     poll_seconds: float = 60, stall_minutes: float = 180) -> dict[str, Any]:
    """The solution updates of the inventory's clusters (state, health checks: a table per cluster and for the
    fleet); with `apply`, apply that update on each selected cluster and follow its update run to the end (a run
    already in progress is followed, not applied again)."""
    parsed = load_inventory(inventory)
    names = clusters or [c.name for c in parsed.clusters if c.azure is not None]
    rows, applied = [], {}
    for name in names:
        target = parsed.cluster(name)
        recorder = RunRecorder(new_run_id(), target.name, time_factor=target.time_factor) if apply else None
        az = azure_cluster(target, recorder, poll_seconds=poll_seconds, stall_minutes=stall_minutes)
        try:
            if recorder is not None:
                narrate_to_run_log(recorder)
                recorder.emit(None, "run", "running", kind="solution-update", update=apply)
                watcher = TreeWatcher(recorder, "solution-update", f"update-{target.name.lower()}")
                try:
                    run, done = az.apply(apply, on_poll=lambda r, w=watcher: w(_run_tree(r)))
                    watcher(_run_tree(run))
                    failing = _run_tree(run).failing()
                    error = None if verdict(run.properties.state) == "succeeded" else \
                        f"update run {run.properties.state}" + (f" at {failing.name}" if failing else "")
                except Stalled as e:
                    run, done, error = None, "stalled", str(e)
                except ArmError as e:
                    run, done, error = None, None, str(e)
                applied[name] = {"update": apply, "done": done, "state": run.properties.state if run else None,
                                 "error": error}
                recorder.emit(None, "run", "succeeded" if error is None else "failed", kind="solution-update",
                              error=error, outcome=applied[name])
            rows += updates_table(name, az.updates()).to_dict(orient="records")
        finally:
            az.arm.close()
    fleet = fleet_updates(pd.DataFrame(rows)).to_dict(orient="records") if rows else []
    if rows:
        create_table_artifact(rows, key="solution-updates", description="Solution updates per cluster")
        create_table_artifact(fleet, key="solution-updates-fleet", description="Solution updates across the fleet")
    return {"updates": rows, "fleet": fleet, "applied": applied}


def _run_tree(run: UpdateRun) -> Step:
    return run.properties.progress or Step(name="update run", status=run.properties.state)
