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
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.locking import embedded, narrate_to_run_log, run_name
from flows.readiness import check_cluster
from hciupgrade.azure.arm import ArmClient, ArmError
from hciupgrade.azure.resources import DeploymentSetting, Step, UpdateRun
from hciupgrade.azure.solution import AzureCluster, fleet_updates, step_table, tree_progress, updates_table
from hciupgrade.models import Approval, ClusterInventory, InputError, load_inventory
from hciupgrade.readiness.summary import FrameBuilder, blocking_checks
from hciupgrade.records import RunRecorder, new_run_id


class SolutionApprovalInput(RunInput):
    """The form the Prefect UI shows before the Deploy."""

    approver: str = Field(min_length=1, description="your name or account")
    reason: str = Field(min_length=1, description="why: the change ticket or the maintenance window")
    deploy: bool = Field(False, description="start the solution upgrade (hours; no rollback is documented)")


def azure_cluster(target: ClusterInventory) -> AzureCluster:
    if target.azure is None:
        raise InputError(f"cluster {target.name} has no azure section in the inventory: the solution upgrade "
                         "needs its subscription, resource group, key vault and IP pool")
    arm = ArmClient(target.azure.endpoint, credential=target.azure.credential.build(), scope=target.azure.scope,
                    time_factor=target.time_factor)
    return AzureCluster(arm, target.azure, target.name, [n.name for n in target.nodes])


def readiness_blockers(inventory: str, cluster: str) -> list[str]:
    """The environment checker's Critical failures on the cluster now (the readiness issue's decision)."""
    result = check_cluster(inventory, cluster, False, [])
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


def _tree(setting: DeploymentSetting, which: str) -> Step:
    reported = setting.properties.reported_properties
    tree = getattr(reported, which) if reported else None
    return tree.root("Validation" if which == "validation_status" else "Deployment") if tree else Step(name=which)


@flow(name="solution-upgrade", flow_run_name=run_name("solution"))
def solution_upgrade(inventory: str, cluster: str | None = None, approval: Approval | None = None,
                     validate_only: bool = False, resume: bool = False, wait_for_approval: bool | None = None,
                     check_readiness: bool = True, poll_seconds: float = 60, run_id: str | None = None
                     ) -> dict[str, Any]:
    """The solution upgrade of one cluster. Without an approval it stops after Validate (awaiting approval), or
    on a Prefect server pauses for the approval form (`wait_for_approval`, default: on a server)."""
    logger = get_run_logger()
    target = load_inventory(inventory).cluster(cluster)
    az = azure_cluster(target)
    recorder = RunRecorder(run_id or new_run_id(), target.name, time_factor=target.time_factor)
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

    try:
        running = az.setting()
        deployed = _tree(running, "deployment_status").status if running else None
        if deployed == "Succeeded":
            logger.info("the solution upgrade of %s is deployed already", target.name)
            return end(None, stage="deployed", deploy="already deployed")
        if deployed != "InProgress":
            blockers = readiness_blockers(inventory, target.name) if check_readiness else []
            prereqs = az.prerequisites(blockers)
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
            result["stage"] = "validate"
            watcher = TreeWatcher(recorder, "solution-validate", None)
            setting = az.validate(on_poll=lambda s: watcher(_tree(s, "validation_status")))
            tree = _tree(setting, "validation_status")
            watcher(tree)
            table = step_table(tree)
            result["validation"] = table.drop(columns=["path"]).to_dict(orient="records")
            create_table_artifact(table.drop(columns=["path"]).fillna("").to_dict(orient="records"),
                                  key=f"solution-{target.name.lower()}-validation",
                                  description=f"Validation of the solution upgrade of {target.name}")
            if tree.status != "Succeeded":
                failing = tree.failing()
                return end(f"validation {tree.status}: " + (f"{failing.name}: {'; '.join(failing.exception)}"
                                                            if failing else "no failing step reported"))
            if validate_only:
                return end(None, stage="validated")
            if approval is None and (wait_for_approval if wait_for_approval is not None else not embedded()):
                logger.warning("validation passed: waiting for the approval of the Deploy")
                answer = pause_flow_run(wait_for_input=SolutionApprovalInput.with_initial_data(
                    description=f"### Start the solution upgrade of {target.name}\nValidation passed. The Deploy "
                                "takes hours and has no documented rollback."), timeout=24 * 3600, poll_interval=5)
                if answer.deploy:
                    approval = Approval(approver=answer.approver, reason=answer.reason, steps=["solution-upgrade"],
                                        source="prefect-ui")
            if approval is None:
                result["awaiting_approval"] = True
                recorder.emit(None, "approval", "failed", error="the Deploy waits for an approval")
                return end(None, stage="awaiting approval")
            recorder.emit(None, "approval", "succeeded", approver=approval.approver, reason=approval.reason,
                          steps=list(approval.steps), source=approval.source)
        else:
            logger.warning("a Deploy is running on %s: following it (never submitting a second one)", target.name)
        result["stage"] = "deploy"
        watcher = TreeWatcher(recorder, "solution-deploy", f"solution-{target.name.lower()}")
        setting, done = az.deploy(on_poll=lambda s: watcher(_tree(s, "deployment_status")), resume=resume,
                                  poll_seconds=poll_seconds)
        tree = _tree(setting, "deployment_status")
        watcher(tree)
        result["deploy"] = done
        result["deployment"] = step_table(tree).drop(columns=["path"]).to_dict(orient="records")
        if tree.status != "Succeeded":
            failing = tree.failing()
            return end(f"deployment {tree.status} at {failing.name if failing else '?'}: "
                       f"{'; '.join(failing.exception) if failing else ''} (fix the cause, then resume: "
                       "hci-upgrade solution --resume)", stage="deploy failed")
        if watcher.progress:
            update_progress_artifact(watcher.progress, 100.0)
        create_markdown_artifact(f"# Solution upgrade of {target.name}: succeeded\nDeploy {done}; "
                                 f"{len(tree.steps)} steps.", key=f"solution-{target.name.lower()}-summary")
        return end(None, stage="deployed")
    except ArmError as e:
        return end(str(e))


@flow(name="solution-updates", flow_run_name=run_name("updates"))
def solution_updates(inventory: str, clusters: list[str] | None = None, apply: str | None = None,
                     poll_seconds: float = 60) -> dict[str, Any]:
    """The solution updates of the inventory's clusters (state, health checks: a table per cluster and for the
    fleet); with `apply`, apply that update on each selected cluster and follow its update run to the end (a run
    already in progress is followed, not applied again)."""
    inv = load_inventory(inventory)
    names = clusters or [c.name for c in inv.clusters if c.azure is not None]
    rows, applied = [], {}
    for name in names:
        target = inv.cluster(name)
        az = azure_cluster(target)
        try:
            if apply:
                recorder = RunRecorder(new_run_id(), target.name, time_factor=target.time_factor)
                narrate_to_run_log(recorder)
                recorder.emit(None, "run", "running", kind="solution-update", update=apply)
                watcher = TreeWatcher(recorder, "solution-update", f"update-{target.name.lower()}")
                try:
                    run, done = az.apply(apply, on_poll=lambda r, w=watcher: w(_run_tree(r)),
                                         poll_seconds=poll_seconds)
                    watcher(_run_tree(run))
                    failing = _run_tree(run).failing()
                    error = None if run.properties.state == "Succeeded" else \
                        f"update run {run.properties.state}" + (f" at {failing.name}" if failing else "")
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
