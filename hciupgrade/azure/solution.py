"""The solution upgrade through Azure (reference/domain.md 1.6, anchors.md 2.5), and the solution updates after
it. hci-upgrade drives Microsoft's documented interfaces only: it reads the prerequisites, puts the cluster's
deploymentSettings (operationType ClusterUpgrade) in Validate and then in Deploy mode, follows the step trees,
applies updates and follows their update runs. It installs nothing on the nodes itself; Azure's Lifecycle
Manager does.

Resumable by construction: before a Deploy, the current deploymentSettings are read, and a Deploy that is still
running is followed, never submitted again; an update with a run in progress is followed, not applied again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hciupgrade.azure.arm import ArmClient, ArmError
from hciupgrade.azure.resources import (
    API_VERSION,
    ARC_API_VERSION,
    KEY_VAULT_API_VERSION,
    DeploymentSetting,
    Extension,
    HciCluster,
    Step,
    Update,
    UpdateRun,
)
from hciupgrade.azure.target import AzureTarget

READY_TO_APPLY = ("Ready", "ReadyToInstall", "InstallationFailed")  # InstallationFailed: a retry of the apply


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


@dataclass(frozen=True)
class Prerequisite:
    check: str
    ok: bool
    detail: str


class AzureCluster:
    """One cluster's resources in ARM."""

    def __init__(self, arm: ArmClient, target: AzureTarget, cluster: str, nodes: list[str]) -> None:
        self.arm, self.target, self.nodes = arm, target, nodes
        self.name = target.resource_name or cluster
        group = f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}"
        self.group = group
        self.base = f"{group}/providers/Microsoft.AzureStackHCI/clusters/{self.name}"
        self.settings_path = f"{self.base}/deploymentSettings/default"

    def arc_id(self, node: str) -> str:
        return f"{self.group}/providers/Microsoft.HybridCompute/machines/{node}"

    @property
    def secret_name(self) -> str:
        return f"{self.name}-AzureStackLCMUserCredential"

    # --- prerequisites ----------------------------------------------------------------------------------------
    def prerequisites(self, readiness_critical: list[str] | None) -> list[Prerequisite]:
        """Read, never written: the cluster resource, an Arc machine per node with the LCM extension at the
        required version, the key vault and its secret, the IP pool, and the readiness result."""
        found: list[Prerequisite] = []
        cluster = self.arm.get_or_none(self.base, API_VERSION)
        found.append(Prerequisite("cluster resource", cluster is not None,
                                  f"{self.name}: {HciCluster.model_validate(cluster).properties.status}" if cluster
                                  else f"{self.name} is not registered in {self.target.resource_group}: run "
                                       "Register-AzStackHCI first"))
        minimum = version_tuple(self.target.lcm_extension_minimum)
        for node in self.nodes:
            machine = self.arm.get_or_none(self.arc_id(node), ARC_API_VERSION)
            if machine is None:
                found.append(Prerequisite(f"Arc machine {node}", False, "no Arc machine: the node is not "
                                                                        "Arc-registered"))
                continue
            extensions = [Extension.model_validate(e) for e in
                          self.arm.list(f"{self.arc_id(node)}/extensions", ARC_API_VERSION)]
            lcm = next((e for e in extensions if e.properties.type == "LcmController"), None)
            version = lcm.properties.type_handler_version if lcm else None
            ok = version is not None and version_tuple(version) >= minimum
            found.append(Prerequisite(f"LCM extension {node}", ok,
                                      f"AzureEdgeLifecycleManager {version}" if ok else
                                      (f"AzureEdgeLifecycleManager {version} < {self.target.lcm_extension_minimum}: "
                                       "update it (Arc machine > Extensions > Update)" if version else
                                       "AzureEdgeLifecycleManager is not installed: New-AzConnectedMachineExtension "
                                       "-Publisher Microsoft.AzureStack.Orchestration -ExtensionType LcmController")))
        vault = f"{self.group}/providers/Microsoft.KeyVault/vaults/{self.target.key_vault}"
        found.append(Prerequisite("key vault", self.arm.get_or_none(vault, KEY_VAULT_API_VERSION) is not None,
                                  self.target.key_vault))
        secret = self.arm.get_or_none(f"{vault}/secrets/{self.secret_name}", KEY_VAULT_API_VERSION)
        found.append(Prerequisite("LCM deployment-user secret", secret is not None,
                                  self.secret_name if secret else f"{self.secret_name} is missing: store "
                                  "base64('user:password') of the LCM deployment user (not Administrator, no "
                                  "domain\\user form) under that name"))
        pool = self.target.ip_pool
        found.append(Prerequisite("IP pool", True, f"{pool.start}-{pool.end} (6 addresses"
                                  + (f", cluster IP {self.target.cluster_ip} outside" if self.target.cluster_ip
                                     else "") + ")"))
        if readiness_critical is None:
            found.append(Prerequisite("readiness", False, "no readiness result: run hci-upgrade readiness first"))
        else:
            found.append(Prerequisite("readiness", not readiness_critical,
                                      "no Critical finding" if not readiness_critical else
                                      f"Critical: {', '.join(readiness_critical[:5])}"))
        return found

    # --- deploymentSettings -------------------------------------------------------------------------------------
    def settings_body(self, mode: str) -> dict[str, Any]:
        """The deploymentSettings of the upgrade template (quickstarts/microsoft.azurestackhci/upgrade-cluster):
        the LCM credential is a reference to the key vault's secret, never its value."""
        t = self.target
        return {"properties": {
            "arcNodeResourceIds": [self.arc_id(n) for n in self.nodes],
            "deploymentMode": mode, "operationType": "ClusterUpgrade",
            "deploymentConfiguration": {"version": t.solution_version, "scaleUnits": [{"deploymentData": {
                "storage": {"configurationMode": "InfraOnly"},
                "infrastructureNetwork": [{"ipPools": [{"startingAddress": str(t.ip_pool.start),
                                                        "endingAddress": str(t.ip_pool.end)}]}],
                "physicalNodes": [{"name": n} for n in self.nodes],
                "secrets": [{"secretName": self.secret_name, "eceSecretName": "AzureStackLCMUserCredential",
                             "secretLocation": f"https://{t.key_vault}.vault.azure.net/secrets/{self.secret_name}"}],
                "optionalServices": {"customLocation": t.custom_location or f"{self.name}-cl"}}}]}}}

    def setting(self) -> DeploymentSetting | None:
        found = self.arm.get_or_none(self.settings_path, API_VERSION)
        return DeploymentSetting.model_validate(found) if found else None

    def validate(self, on_poll: Callable[[DeploymentSetting], None] | None = None) -> DeploymentSetting:
        """Validate mode: creates the prerequisite resources and runs the checks (about 10 minutes). Returns the
        settings with the validation's step tree, whatever its result."""
        _, op = self.arm.begin("PUT", self.settings_path, API_VERSION, self.settings_body("Validate"))
        try:
            self.arm.wait(op, on_poll=lambda _: on_poll(self.setting()) if on_poll else None)  # type: ignore[arg-type]
        except ArmError:
            pass  # a failed validation: its step tree says why
        setting = self.setting()
        assert setting is not None
        return setting

    def deploy(self, on_poll: Callable[[DeploymentSetting], None] | None = None, *, resume: bool = False,
               poll_seconds: float = 60) -> tuple[DeploymentSetting, str]:
        """Deploy mode, or follow the Deploy already running (after a restart of the orchestrator); with
        `resume`, re-submit after a failed Deploy, as the portal's resume does. Returns the settings at the end
        and what was done: "submitted", "followed", "resumed", "already deployed"."""
        current = self.setting()
        status = _deployment_status(current)
        if status == "Succeeded":
            assert current is not None
            return current, "already deployed"  # a rerun after the end: nothing to submit
        if status == "InProgress":
            done = "followed"
        elif status == "Failed" and not resume:
            raise ArmError("the last Deploy failed: fix its cause, then resume (hci-upgrade solution --resume), "
                           "as the portal's resume does")
        else:
            self.arm.begin("PUT", self.settings_path, API_VERSION, self.settings_body("Deploy"))
            done = "resumed" if status == "Failed" else "submitted"
        while True:  # the resource, not the operation URL: it outlives the orchestrator (hours)
            current = self.setting()
            if on_poll and current:
                on_poll(current)
            if _deployment_status(current) not in ("InProgress", None):
                assert current is not None
                return current, done
            self.arm.sleep(poll_seconds)

    # --- updates ----------------------------------------------------------------------------------------------
    def updates(self) -> list[Update]:
        return [Update.model_validate(u) for u in self.arm.list(f"{self.base}/updates", API_VERSION)]

    def update_runs(self, update: str) -> list[UpdateRun]:
        runs = [UpdateRun.model_validate(r) for r in
                self.arm.list(f"{self.base}/updates/{update}/updateRuns", API_VERSION)]
        return sorted(runs, key=lambda r: r.properties.time_started or "")

    def apply(self, update: str, on_poll: Callable[[UpdateRun], None] | None = None,
              poll_seconds: float = 60) -> tuple[UpdateRun, str]:
        """Apply an update and follow its run to the end; a run already in progress (the orchestrator was
        restarted) is followed, never applied twice. Returns the last run and "applied" or "followed"."""
        runs = self.update_runs(update)
        if runs and runs[-1].properties.state == "InProgress":
            done = "followed"
        else:
            state = Update.model_validate(self.arm.get(f"{self.base}/updates/{update}", API_VERSION)).properties.state
            if state not in READY_TO_APPLY:
                raise ArmError(f"update {update} is {state}: only an update that is {' or '.join(READY_TO_APPLY)} "
                               "can be applied")
            self.arm.begin("POST", f"{self.base}/updates/{update}/apply", API_VERSION)
            done = "applied"
        while True:  # the update run: the provider's record of an operation longer than a day
            runs = self.update_runs(update)
            if runs:
                if on_poll:
                    on_poll(runs[-1])
                if runs[-1].properties.state not in ("InProgress", None):
                    return runs[-1], done
            self.arm.sleep(poll_seconds)


def _deployment_status(setting: DeploymentSetting | None) -> str | None:
    if setting is None or setting.properties.reported_properties is None:
        return None
    tree = setting.properties.reported_properties.deployment_status
    return tree.status if tree else None


def step_table(root: Step) -> pd.DataFrame:
    """A step tree as rows: depth, step (its path), status, start, end, and the exception or error message."""
    rows = [{"depth": depth, "step": "  " * depth + step.name, "path": path, "status": step.status or "",
             "start": step.start_time_utc, "end": step.end_time_utc,
             "error": "; ".join(step.exception) or step.error_message or ""}
            for depth, path, step in root.walk()]
    return pd.DataFrame(rows, columns=["depth", "step", "path", "status", "start", "end", "error"])


def tree_progress(root: Step) -> float:
    """The share of top-level steps done, for a progress artifact (the tree's leaves have uneven lengths)."""
    if not root.steps:
        return 1.0 if root.status in ("Success", "Succeeded") else 0.0
    return sum(1 for s in root.steps if s.status == "Success") / len(root.steps)


def updates_table(cluster: str, updates: list[Update]) -> pd.DataFrame:
    """Per update: state, version, health and its failed health checks by severity (Critical blocks)."""
    rows = []
    for u in updates:
        failed = [c for c in u.properties.health_check_result if c.status == "Failed"]
        rows.append({"cluster": cluster, "update": u.name, "version": u.properties.version,
                     "state": u.properties.state, "health": u.properties.health_state,
                     "critical": sum(1 for c in failed if c.severity == "Critical"),
                     "warnings": sum(1 for c in failed if c.severity == "Warning"),
                     "failed_checks": "; ".join(f"{c.severity}: {c.display_name or c.name}" for c in failed)})
    return pd.DataFrame(rows, columns=["cluster", "update", "version", "state", "health", "critical", "warnings",
                                       "failed_checks"])


def fleet_updates(table: pd.DataFrame) -> pd.DataFrame:
    """Per update across the fleet: how many clusters have it in each state, and how many a Critical health
    check blocks."""
    if table.empty:
        return pd.DataFrame(columns=["update", "clusters", "critical_blocked"])
    counts = table.pivot_table(index="update", columns="state", values="cluster", aggfunc="count", fill_value=0)
    counts.insert(0, "clusters", counts.sum(axis=1))
    counts["critical_blocked"] = table[table["critical"] > 0].groupby("update")["cluster"].count().reindex(
        counts.index, fill_value=0)
    return counts.reset_index().rename_axis(columns=None)
