"""The solution upgrade through Azure (reference/domain.md 1.6, anchors.md 2.5), and the solution updates after
it. hci-upgrade drives Microsoft's documented interfaces only: it reads the prerequisites, puts the cluster's
deploymentSettings (operationType ClusterUpgrade) in Validate and then in Deploy mode, follows the step trees,
applies updates and follows their update runs. It installs nothing on the nodes itself; Azure's Lifecycle
Manager does.

Resumable by construction: before a Deploy, the current deploymentSettings are read, and a Deploy that is still
running is followed, never submitted again; an update with a run in progress is followed, not applied again."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from hciupgrade.azure.arm import ArmClient, ArmError, Operation, SubmitUncertain
from hciupgrade.azure.operations import (
    Budget,
    Ledger,
    Stalled,
    View,
    follow,
    in_progress,
    recorded_operation,
    tree_fingerprint,
    verdict,
)
from hciupgrade.azure.resources import (
    API_VERSION,
    ARC_API_VERSION,
    KEY_VAULT_API_VERSION,
    ArcMachine,
    DeploymentSetting,
    Extension,
    HciCluster,
    Step,
    Update,
    UpdateRun,
)
from hciupgrade.azure.target import AzureTarget

log = logging.getLogger(__name__)

READY_TO_APPLY = ("Ready", "ReadyToInstall", "InstallationFailed")  # InstallationFailed: a retry of the apply
ROLE_API_VERSION = "2022-04-01"  # Microsoft.Authorization/roleAssignments, as the template
# the role definitions the upgrade template assigns each Arc machine's identity at resource-group scope
# (azure-quickstart-templates upgrade-cluster azuredeploy.json@15c284b4: arcMachineRoleAssignment,
# ArcMachineKVRoleAssignment, ArcMachineInfraVMRoleAssignment)
TEMPLATE_ROLES = {
    "865ae368-6a45-4bd1-8fbf-0d5151f56fc1": "Azure Stack HCI Device Management Role",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "c99c945f-8bd1-4fb1-a903-01460aae6068": "Azure Stack HCI Connected InfraVMs",
}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _guid(value: str) -> str:
    return value.rsplit("/", 1)[-1].replace("-", "").lower()


@dataclass(frozen=True)
class Prerequisite:
    check: str
    ok: bool
    detail: str


class AzureCluster:
    """One cluster's resources in ARM. `ledger` records each submit so that a rerun follows it rather than
    submitting again; `budget` bounds each follow (deadline, stall, poll)."""

    def __init__(self, arm: ArmClient, target: AzureTarget, cluster: str, nodes: list[str], *,
                 ledger: Ledger | None = None, budget: Budget | None = None) -> None:
        self.arm, self.target, self.nodes = arm, target, nodes
        self.cluster = cluster
        self.name = target.resource_name or cluster
        self.ledger = ledger or Ledger(None)
        self.budget = budget or Budget()
        group = f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}"
        self.group = group
        self.base = f"{group}/providers/Microsoft.AzureStackHCI/clusters/{self.name}"
        self.settings_path = f"{self.base}/deploymentSettings/default"
        # the ledger's keys: where the resource is (another endpoint or subscription is another resource)
        self.settings_key = f"{arm.endpoint}{self.settings_path}"

    def update_key(self, update: str) -> str:
        return f"{self.arm.endpoint}{self.base}/updates/{update}"

    def arc_id(self, node: str) -> str:
        return f"{self.group}/providers/Microsoft.HybridCompute/machines/{node}"

    @property
    def secret_name(self) -> str:
        return f"{self.name}-AzureStackLCMUserCredential"

    # --- prerequisites ----------------------------------------------------------------------------------------
    def prerequisites(self, readiness_critical: list[str] | None, *, assign_roles: bool = False
                      ) -> list[Prerequisite]:
        """Read, never written: the cluster resource, an Arc machine per node (Connected, its identity holding
        the template's roles) with the LCM extension Succeeded at the required version, the key vault and its
        secret, the IP pool, and the readiness result. With `assign_roles`, missing roles are reported as to be
        assigned (assign_roles() makes them)."""
        found: list[Prerequisite] = []
        cluster = self.arm.get_or_none(self.base, API_VERSION)
        found.append(Prerequisite("cluster resource", cluster is not None,
                                  f"{self.name}: {HciCluster.model_validate(cluster).properties.status}" if cluster
                                  else f"{self.name} is not registered in {self.target.resource_group}: run "
                                       "Register-AzStackHCI first"))
        minimum = version_tuple(self.target.lcm_extension_minimum)
        for node in self.nodes:
            raw = self.arm.get_or_none(self.arc_id(node), ARC_API_VERSION)
            if raw is None:
                found.append(Prerequisite(f"Arc machine {node}", False, "no Arc machine: the node is not "
                                                                        "Arc-registered"))
                continue
            machine = ArcMachine.model_validate(raw)
            status = machine.properties.status
            found.append(Prerequisite(f"Arc machine {node}", status == "Connected",
                                      f"{status}" if status == "Connected" else
                                      f"{status}: the Arc agent must be Connected (azcmagent show on the node)"))
            extensions = [Extension.model_validate(e) for e in
                          self.arm.list(f"{self.arc_id(node)}/extensions", ARC_API_VERSION)]
            lcm = next((e for e in extensions if e.properties.type == "LcmController"), None)
            version = lcm.properties.type_handler_version if lcm else None
            state = lcm.properties.provisioning_state if lcm else None
            ok = version is not None and version_tuple(version) >= minimum and state == "Succeeded"
            found.append(Prerequisite(f"LCM extension {node}", ok,
                                      f"AzureEdgeLifecycleManager {version}" if ok else
                                      (f"AzureEdgeLifecycleManager {version} is {state}: remove and reinstall it "
                                       "(Arc machine > Extensions)" if version and state != "Succeeded" else
                                       f"AzureEdgeLifecycleManager {version} < {self.target.lcm_extension_minimum}: "
                                       "update it (Arc machine > Extensions > Update)" if version else
                                       "AzureEdgeLifecycleManager is not installed: New-AzConnectedMachineExtension "
                                       "-Publisher Microsoft.AzureStack.Orchestration -ExtensionType LcmController")))
            missing = self.missing_roles(machine)
            found.append(Prerequisite(
                f"roles of {node}'s identity", not missing or (assign_roles and machine.principal_id is not None),
                "all three of the template's roles" if not missing else
                (f"missing: {', '.join(missing)}: " + ("to be assigned (--assign-roles)" if assign_roles else
                                                       "assign them at the resource group, or run with "
                                                       "--assign-roles (approved)"))))
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

    def _assignments(self, principal: str) -> set[str]:
        path = (f"{self.group}/providers/Microsoft.Authorization/roleAssignments?$filter=principalId eq "
                f"'{principal}'")
        return {_guid(a.get("properties", {}).get("roleDefinitionId", ""))
                for a in self.arm.list(path, ROLE_API_VERSION)}

    def missing_roles(self, machine: ArcMachine) -> list[str]:
        """The template's roles the machine's identity lacks at the resource group (all, without an identity)."""
        if machine.principal_id is None:
            return list(TEMPLATE_ROLES.values())
        held = self._assignments(machine.principal_id)
        return [name for role, name in TEMPLATE_ROLES.items() if _guid(role) not in held]

    def assign_roles(self) -> list[str]:
        """Assign the template's missing roles to each Arc machine's identity at the resource group (PUT
        roleAssignments/{guid}: idempotent; 409 RoleAssignmentExists means it is there). Returns what was made."""
        made = []
        for node in self.nodes:
            machine = ArcMachine.model_validate(self.arm.get(self.arc_id(node), ARC_API_VERSION))
            if machine.principal_id is None:
                raise ArmError(f"Arc machine {node} has no managed identity: re-run its Arc registration")
            held = self._assignments(machine.principal_id)
            for role, name in TEMPLATE_ROLES.items():
                if _guid(role) in held:
                    continue
                assignment = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.arc_id(node)}/{role}")  # the same on a rerun
                body = {"properties": {"roleDefinitionId": f"/subscriptions/{self.target.subscription_id}/providers/"
                                                           f"Microsoft.Authorization/roleDefinitions/{role}",
                                       "principalId": machine.principal_id, "principalType": "ServicePrincipal"}}
                try:
                    self.arm.request("PUT", f"{self.group}/providers/Microsoft.Authorization/roleAssignments/"
                                            f"{assignment}", api_version=ROLE_API_VERSION, json=body)
                except ArmError as e:
                    if e.code != "RoleAssignmentExists":
                        raise
                made.append(f"{node}: {name}")
        return made

    def ensure_edge_devices(self) -> None:
        """Microsoft.AzureStackHCI/edgeDevices/default (kind HCI) on each Arc machine, as the 2503+ template
        creates them before a Validate (CreateHciEdgeDevice.json, 2024-09-01-preview). A PUT of the same body
        is idempotent; one that answers with an operation is followed to its end."""
        for node in self.nodes:
            path = f"{self.arc_id(node)}/providers/Microsoft.AzureStackHCI/edgeDevices/default"
            response = self.arm.request("PUT", path, api_version=self.target.api_version,
                                        json={"kind": "HCI", "properties": {}})
            if "Azure-AsyncOperation" in response.headers or response.status_code == 202:
                op = Operation(response.headers.get("Azure-AsyncOperation"), response.headers.get("Location"),
                               self.arm.url(path, self.target.api_version), self.arm.retry_after(response),
                               self.arm.now())

                def device(p: str = path) -> View[dict[str, Any]]:
                    doc = self.arm.get(p, self.target.api_version)
                    word = doc.get("properties", {}).get("provisioningState", "Succeeded")
                    return View(doc, verdict(word), word)

                end = follow(self.arm, op, device, budget=self.budget, what=f"edge device of {node}")
                if end.verdict != "succeeded":
                    raise ArmError(f"the edge device of {node} ended {end.fingerprint}")

    # --- deploymentSettings -------------------------------------------------------------------------------------
    def settings_body(self, mode: str) -> dict[str, Any]:
        """The deploymentSettings of the upgrade template (azure-quickstart-templates upgrade-cluster
        azuredeploy.json@15c284b4, resource DeploymentSettings), field for field; the LCM credential is a
        reference to the key vault's secret, never its value."""
        t = self.target
        assert t.network is not None and t.domain_fqdn, "AzureTarget.upgrade_problems() first"
        addresses = {n.lower(): a for n, a in t.node_addresses.items()}
        return {"properties": {
            "arcNodeResourceIds": [self.arc_id(n) for n in self.nodes],
            "deploymentMode": mode, "operationType": "ClusterUpgrade",
            "deploymentConfiguration": {"version": t.solution_version, "scaleUnits": [{"deploymentData": {
                "observability": {"streamingDataClient": t.observability.streaming_data_client,
                                  "euLocation": t.observability.eu_location,
                                  "episodicDataUpload": t.observability.episodic_data_upload},
                "cluster": {"name": t.failover_cluster_name or self.cluster},
                "storage": {"configurationMode": "InfraOnly"},
                "namingPrefix": t.naming_prefix,
                "domainFqdn": t.domain_fqdn,
                "infrastructureNetwork": [{
                    "subnetMask": str(t.network.subnet_mask), "gateway": str(t.network.gateway),
                    "ipPools": [{"startingAddress": str(t.ip_pool.start), "endingAddress": str(t.ip_pool.end)}],
                    "dnsServers": [str(d) for d in t.network.dns_servers]}],
                "physicalNodes": [{"name": n, "ipv4Address": str(addresses[n.lower()])} for n in self.nodes],
                "adouPath": t.adou_path,
                "secrets": [{"secretName": self.secret_name, "eceSecretName": "AzureStackLCMUserCredential",
                             "secretLocation": f"https://{t.key_vault}.{t.vault_suffix}/secrets/{self.secret_name}"}],
                "optionalServices": {"customLocation": t.custom_location or f"{self.name}-cl"}}}]}}}

    def setting(self) -> DeploymentSetting | None:
        found = self.arm.get_or_none(self.settings_path, self.target.api_version)
        return DeploymentSetting.model_validate(found) if found else None

    def _tree_view(self, which: str, before: str | None) -> View[DeploymentSetting] | None:
        """The settings once `which` tree (validation_status, deployment_status) differs from `before`."""
        setting = self.setting()
        root = reported_tree(setting, which)
        if root is None:
            return None
        fingerprint = tree_fingerprint(root)
        if fingerprint == before:
            return None  # what was there before the submit: the cluster has not reported yet
        assert setting is not None
        return View(setting, verdict(root.status), fingerprint, in_progress(root))

    def _submit(self, kind: str, key: str, method: str, path: str, api_version: str, body: Any,
                before: Any) -> Operation | None:
        """Record, submit, record the operation. A lost answer returns None: the view alone then says whether
        Azure took it (nothing is sent twice)."""
        self.ledger.submitting(kind, key, before)
        try:
            _, op = self.arm.begin(method, path, api_version, body)
        except SubmitUncertain as e:
            log.warning("%s: %s; reading the resource to learn whether it was taken", kind, e)
            return None
        except ArmError as e:
            self.ledger.ended(kind, key, "failed", str(e))
            raise
        self.ledger.submitted(kind, key, op, before)
        return op

    def _follow_settings(self, kind: str, which: str, op: Operation | None, before: str | None,
                         on_poll: Callable[[DeploymentSetting], None] | None, deadline_s: float
                         ) -> DeploymentSetting:
        budget = replace(self.budget, deadline_s=min(self.budget.deadline_s, deadline_s))
        try:
            end = follow(self.arm, op, lambda: self._tree_view(which, before), budget=budget, what=kind,
                         on_view=on_poll)
        except Stalled:
            raise  # Azure may still be working: the ledger keeps it pending, a rerun follows it
        except ArmError as e:
            self.ledger.ended(kind, self.settings_key, "failed", str(e))
            raise
        self.ledger.ended(kind, self.settings_key, end.verdict)
        return end.value

    def validate(self, current: DeploymentSetting | None,
                 on_poll: Callable[[DeploymentSetting], None] | None = None) -> DeploymentSetting:
        """Validate mode: creates the prerequisite resources and runs the checks (about 10 minutes), followed
        to its end. Returns the settings with the validation's step tree, whatever its result. A Validate
        recorded and not followed to its end (the orchestrator died) is followed, not submitted again."""
        pending = self.ledger.pending("validate", self.settings_key)
        if pending is not None:
            op, before = recorded_operation(pending, self.arm), pending.get("before")
        else:
            if self.target.edge_devices:
                self.ensure_edge_devices()
            root = reported_tree(current, "validation_status")
            before = tree_fingerprint(root) if root else None
            op = self._submit("validate", self.settings_key, "PUT", self.settings_path, self.target.api_version,
                              self.settings_body("Validate"), before)
        return self._follow_settings("validate", "validation_status", op, before, on_poll, 2 * 3600)

    def deploy(self, current: DeploymentSetting | None,
               on_poll: Callable[[DeploymentSetting], None] | None = None, *, resume: bool = False
               ) -> tuple[DeploymentSetting, str]:
        """Deploy mode, or follow the Deploy already running or recorded (after a restart of the orchestrator);
        with `resume`, submit it again after a failed Deploy, in Deploy mode, as the portal's resume does.
        Returns the settings at the end and what was done: "submitted", "followed", "resumed", "already
        deployed"."""
        pending = self.ledger.pending("deploy", self.settings_key)
        root = reported_tree(current, "deployment_status")
        status = verdict(root.status) if root else None
        if pending is not None:
            op, before, done = recorded_operation(pending, self.arm), pending.get("before"), "followed"
        elif status == "running":
            op, before, done = None, None, "followed"
        elif status == "succeeded" and current is not None and current.properties.deployment_mode == "Deploy":
            return current, "already deployed"  # a rerun after the end: nothing to submit
        elif status == "failed" and not resume:
            raise ArmError("the last Deploy failed: fix its cause, then resume (hci-upgrade solution --resume), "
                           "as the portal's resume does")
        else:
            before = tree_fingerprint(root) if root else None
            op = self._submit("deploy", self.settings_key, "PUT", self.settings_path, self.target.api_version,
                              self.settings_body("Deploy"), before)
            done = "resumed" if status == "failed" else "submitted"
        return self._follow_settings("deploy", "deployment_status", op, before, on_poll, 12 * 3600), done

    # --- updates ----------------------------------------------------------------------------------------------
    def updates(self) -> list[Update]:
        return [Update.model_validate(u) for u in self.arm.list(f"{self.base}/updates", API_VERSION)]

    def update_runs(self, update: str) -> list[UpdateRun]:
        runs = [UpdateRun.model_validate(r) for r in
                self.arm.list(f"{self.base}/updates/{update}/updateRuns", API_VERSION)]
        return sorted(runs, key=lambda r: r.properties.time_started or "")

    def _run_view(self, update: str, before: list[str]) -> View[UpdateRun] | None:
        """The newest run that was not there before the apply (until Azure writes it, the previous run, maybe a
        failed one, is still the latest)."""
        new = [r for r in self.update_runs(update) if r.name not in before]
        if not new:
            return None
        run = new[-1]
        tree = run.properties.progress or Step(name="update run")
        return View(run, verdict(run.properties.state), [run.properties.state, tree_fingerprint(tree)],
                    in_progress(tree))

    def apply(self, update: str, on_poll: Callable[[UpdateRun], None] | None = None) -> tuple[UpdateRun, str]:
        """Apply an update and follow its operation and then its run to the end; a run in progress or an apply
        recorded and not followed to its end (the orchestrator was restarted) is followed, never applied twice.
        Returns the last run and "applied" or "followed"."""
        pending = self.ledger.pending("apply", self.update_key(update))
        if pending is not None:
            op, before, done = recorded_operation(pending, self.arm), list(pending.get("before") or []), "followed"
        else:
            runs = self.update_runs(update)
            if runs and verdict(runs[-1].properties.state) == "running":
                op, before, done = None, [r.name for r in runs[:-1]], "followed"
            else:
                state = Update.model_validate(self.arm.get(f"{self.base}/updates/{update}", API_VERSION)
                                              ).properties.state
                if state not in READY_TO_APPLY:
                    raise ArmError(f"update {update} is {state}: only an update that is "
                                   f"{' or '.join(READY_TO_APPLY)} can be applied")
                before = [r.name for r in runs]
                op = self._submit("apply", self.update_key(update), "POST", f"{self.base}/updates/{update}/apply",
                                  API_VERSION, None, before)
                done = "applied"
        try:
            end = follow(self.arm, op, lambda: self._run_view(update, before), budget=self.budget,
                         what=f"update {update}", on_view=on_poll)
        except Stalled:
            raise
        except ArmError as e:
            self.ledger.ended("apply", self.update_key(update), "failed", str(e))
            raise
        self.ledger.ended("apply", self.update_key(update), end.verdict)
        return end.value, done


def reported_tree(setting: DeploymentSetting | None, which: str) -> Step | None:
    """validation_status or deployment_status of the settings' reportedProperties, as a step tree."""
    reported = setting.properties.reported_properties if setting else None
    tree = getattr(reported, which) if reported else None
    return tree.root("Validation" if which == "validation_status" else "Deployment") if tree else None


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
        return 1.0 if verdict(root.status) == "succeeded" else 0.0
    return sum(1 for s in root.steps if verdict(s.status) == "succeeded") / len(root.steps)


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
