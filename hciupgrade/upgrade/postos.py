"""The post-OS steps of one cluster, in the documented order (reference/domain.md §1.4), after every node runs
23H2 with the same cumulative update:

    verify every node Up on 25398 with the same LCU at or above the minimum; re-verify the registry values
    where Storage Replica is configured: the extra restart of each node (a rolling restart, one node at a time)
    show Update-ClusterFunctionalLevel -WhatIf
    ask for the approval of what is irreversible (functional level, storage pool, VM configuration versions)
    Update-ClusterFunctionalLevel; Update-StoragePool; each approved VM: shut down, Update-VMVersion, start, verify
    Test-Cluster, summarised
    the report: functional level, pool version, builds and VM versions before and after

Nothing irreversible runs without an Approval; without one the run ends "awaiting approval" and says what waits.
Its parts are handed in like the rolling engine's: `approve` (the CLI's flag, or a Prefect pause with a typed
input), `restart` (a rolling restart through the engine, for Storage Replica) and `step` (what runs each step: a
Prefect task run per step in the flow, so the run graph shows them; the approval is never inside one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd
from pydantic import Field

from hciupgrade.cluster import ClusterClient
from hciupgrade.models import Approval, RunOptions, Strict
from hciupgrade.psenums import NodeState, VMState, parse
from hciupgrade.records import RunRecorder
from hciupgrade.remote import SWITCH, CmdletFailed, RemoteError
from hciupgrade.targets import at_least
from hciupgrade.upgrade.preflight import Finding


class Levels(Strict):
    """What the post-OS steps change, read before and after."""

    functional_level: int
    pool: str
    pool_version: int
    builds: dict[str, str]
    vm_versions: dict[str, str] = Field(default_factory=dict)
    vm_target: str | None = None  # the hosts' default VM configuration version (Get-VMHostSupportedVersion)


class VmResult(Strict):
    vm: str
    node: str
    before: str
    after: str | None = None
    result: str = "not-started"  # updated, already, failed, not-started
    error: str | None = None


class PostUpgradeOutcome(Strict):
    run_id: str
    cluster: str
    succeeded: bool
    awaiting_approval: list[str] = Field(default_factory=list)
    approval: Approval | None = None
    findings: list[dict[str, Any]] = Field(default_factory=list)
    before: Levels | None = None
    after: Levels | None = None
    vms: list[VmResult] = Field(default_factory=list)
    validation: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None


class StopPostUpgrade(Exception):
    pass


Approve = Callable[[list[str], str], Approval | None]  # (steps waiting, what will happen) -> approval or None


@dataclass
class PostUpgrade:
    client: ClusterClient
    options: RunOptions
    recorder: RunRecorder
    approve: Approve
    restart: Callable[[list[str]], bool] = lambda nodes: False  # a rolling restart of these nodes; True if done
    step: Callable[[str, Callable[[], Any]], Any] = lambda name, body: body()  # runs one step's body
    findings: list[Finding] = field(default_factory=list)

    def run(self) -> PostUpgradeOutcome:
        outcome = PostUpgradeOutcome(run_id=self.recorder.run_id, cluster=self.client.name, succeeded=False)
        self.recorder.emit(None, "run", "running", kind="post-upgrade")
        try:
            outcome.before = self.step("verify", self.verified)
            if self.client.storage_replica():
                self.step("storage-replica-restart", self.replica_restart)
            pending, plan = self.step("what-if", lambda: self.pending(outcome.before))
            if pending:
                outcome.approval = self.ask(pending, plan)
                approved = set(outcome.approval.steps) if outcome.approval else set()
                outcome.awaiting_approval = [s for s in pending if s not in approved]
                self.irreversible(outcome, approved)
            outcome.validation = self.step("test-cluster", self.validate)
            outcome.after = self.step("report", self.levels)
            outcome.succeeded = not outcome.awaiting_approval and all(v.result != "failed" for v in outcome.vms)
            if not outcome.succeeded and not outcome.error:
                failed = [v.vm for v in outcome.vms if v.result == "failed"]
                outcome.error = (f"VM configuration version not updated: {', '.join(failed)}" if failed else
                                 f"awaiting approval: {', '.join(outcome.awaiting_approval)}")
        except (StopPostUpgrade, RemoteError) as e:
            outcome.error = str(e)
        outcome.findings = [f.__dict__ for f in self.findings]
        self.recorder.emit(None, "run", "succeeded" if outcome.succeeded else "failed", error=outcome.error,
                           kind="post-upgrade", outcome=outcome.model_dump(mode="json"))
        return outcome

    # --- the steps ----------------------------------------------------------------------------------------------
    def verified(self) -> Levels:
        with self.recorder.phase(None, "verify"):
            levels = self.levels()
            self.verify(levels)
            self.second_hop()
        return levels

    def replica_restart(self) -> None:
        with self.recorder.phase(None, "storage-replica-restart"):
            if not self.restart(list(self.client.sessions)):
                raise StopPostUpgrade("Storage Replica: the second restart of each node did not complete")

    def validate(self) -> list[dict[str, Any]]:
        with self.recorder.phase(None, "validate") as extra:
            rows = self.client.validate()
            extra["summary"] = validation_summary(rows).to_dict(orient="records")
        return rows

    # --- reads ---------------------------------------------------------------------------------------------------
    def levels(self) -> Levels:
        pool, version = self.client.pool()
        vms = {str(vm["Name"]): str(vm["Version"]) for node in self.client.sessions
               for vm in self._vms(node)}
        return Levels(functional_level=self.client.functional_level(), pool=pool, pool_version=version,
                      builds={n: self.client.os_build(n) for n in self.client.sessions}, vm_versions=vms,
                      vm_target=self.client.default_vm_version())

    def _vms(self, node: str) -> list[dict[str, Any]]:
        try:
            return self.client.vms(node)
        except RemoteError:
            return []

    @property
    def lcu_minimum(self) -> str:
        return self.options.target_build if self.options.update == "cumulative" and self.options.target_build \
            else self.options.release.lcu_minimum

    def verify(self, levels: Levels) -> None:
        """Every node Up on the target release with the same cumulative update at or above the minimum; the
        registry values."""
        target = self.options.release
        states = {n.name: n.state for n in self.client.nodes()}
        problems = [f"{n} is {s.name}" for n, s in states.items() if s != NodeState.Up]
        problems += [f"{n} runs {b}, not {target.name} ({target.number})" for n, b in levels.builds.items()
                     if not target.runs(b)]
        low = [f"{n} is on {b}, below {self.lcu_minimum}" for n, b in levels.builds.items()
               if target.runs(b) and not at_least(b, self.lcu_minimum)]
        if len(set(levels.builds.values())) > 1:
            problems.append("the nodes run different builds: " + ", ".join(f"{n} {b}" for n, b in
                                                                             levels.builds.items()))
        self.add(f"every node Up on {target.name} with the same cumulative update", not problems and not low,
                 "; ".join(problems + low) or f"every node on {next(iter(levels.builds.values()))}")
        if problems or low:
            raise StopPostUpgrade("verify: " + "; ".join(problems + low) + " (run `hci-upgrade finish` to install "
                                  "the cumulative update, or finish the feature update first)")
        for key, name in target.registry:
            want = 0
            found = {n: self.client.registry_value(n, key, name) for n in self.client.sessions}
            off = [f"{n} ({'missing' if v is None else v})" for n, v in found.items() if v != want]
            self.add(f"{name} = {want}", not off, "on every node" if not off else
                     f"not {want} on {', '.join(off)}: set it again (readiness --remediate registry) and restart "
                     "those nodes", blocking=False)

    def pending(self, levels: Levels) -> tuple[list[str], str]:
        """The irreversible steps this cluster still needs, and what will happen, for the approver to read."""
        pending, lines = [], []
        target = self.options.release
        if levels.functional_level < target.functional_level:
            try:
                self.client.functional_level_whatif()
                whatif = "Update-ClusterFunctionalLevel -WhatIf: it would succeed"
            except CmdletFailed as e:
                whatif = f"Update-ClusterFunctionalLevel -WhatIf: it would fail: {e.errors[0].message}"
            self.add("functional level can be raised", whatif.endswith("succeed"), whatif)
            self.recorder.emit(None, "whatif", "succeeded" if whatif.endswith("succeed") else "failed", detail=whatif)
            pending.append("functional-level")
            lines.append(f"- raise the cluster functional level {levels.functional_level} -> "
                         f"{target.functional_level} ({whatif}); no rollback to 22H2 afterwards")
        if levels.pool_version < target.pool_version:
            pending.append("storage-pool")
            lines.append(f"- Update-StoragePool '{levels.pool}': version {levels.pool_version} -> "
                         f"{target.pool_version} "
                         "or later")
        vms = self.vms_to_update(levels)
        if vms:
            pending.append("vm-versions")
            lines.append(f"- update the configuration version of {len(vms)} VM(s) to {levels.vm_target}, one at a "
                         f"time, each shut down for it: {', '.join(vms)}")
        return pending, "\n".join(lines)

    def vms_to_update(self, levels: Levels) -> list[str]:
        chosen = list(levels.vm_versions) if self.options.vm_version_update_all else [
            v for v in levels.vm_versions if v.lower() in {n.lower() for n in self.options.vm_version_update}]
        return [v for v in chosen if levels.vm_target and levels.vm_versions[v] != levels.vm_target]

    # --- the approval and the irreversible steps ------------------------------------------------------------------
    def ask(self, pending: list[str], plan: str) -> Approval | None:
        self.recorder.emit(None, "approval", "running", steps=pending, plan=plan)
        approval = self.approve(pending, plan)
        if approval is None:
            self.recorder.emit(None, "approval", "failed", steps=pending,
                               error="not approved: nothing irreversible was done")
            return None
        self.recorder.emit(None, "approval", "succeeded", approver=approval.approver, reason=approval.reason,
                           steps=approval.steps, source=approval.source)
        return approval

    def irreversible(self, outcome: PostUpgradeOutcome, approved: set[str]) -> None:
        before = outcome.before
        assert before is not None
        target = self.options.release
        if "functional-level" in approved and before.functional_level < target.functional_level:
            self.step("functional-level", lambda: self.raise_functional_level(before))
        if "storage-pool" in approved and before.pool_version < target.pool_version:
            self.step("storage-pool", lambda: self.update_pool(before))
        if "vm-versions" in approved:
            outcome.vms = self.update_vms(before)

    def raise_functional_level(self, before: Levels) -> None:
        with self.recorder.phase(None, "functional-level", before=before.functional_level) as extra:
            extra["after"] = level = self.client.raise_functional_level()
        if level < self.options.release.functional_level:
            raise StopPostUpgrade(f"the functional level is {level} after Update-ClusterFunctionalLevel")

    def update_pool(self, before: Levels) -> None:
        with self.recorder.phase(None, "storage-pool", before=before.pool_version) as extra:
            try:
                self.client.update_pool(before.pool)
            except CmdletFailed as e:
                raise StopPostUpgrade(f"Update-StoragePool '{before.pool}' failed: {e.errors[0].message}") from None
            extra["after"] = self.client.pool()[1]

    def update_vms(self, levels: Levels) -> list[VmResult]:
        """One VM at a time: shut down, Update-VMVersion, start, verify. A VM that will not shut down is left
        running and the rest are not touched (a failure is the operator's to read before more downtime)."""
        owners = {str(vm["Name"]): node for node in self.client.sessions for vm in self._vms(node)}
        results = []
        for name in self.vms_to_update(levels):
            node = owners[name]
            result = VmResult(vm=name, node=node, before=levels.vm_versions[name])
            results.append(result)
            try:
                self.step(f"vm-version-{name}", partial(self.update_vm, node, name, result))
            except (RemoteError, StopPostUpgrade) as e:
                result.result, result.error = "failed", str(e)
                self._start_again(node, name)
                break
        return results

    def update_vm(self, node: str, name: str, result: VmResult) -> None:
        with self.recorder.phase(node, "vm-version", vm=name):
            self.client.vm_call(node, "Stop-VM", name)
            self.client.vm_call(node, "Update-VMVersion", name, Force=SWITCH)
            self.client.vm_call(node, "Start-VM", name)
            vm = next(v for v in self.client.vms(node) if str(v["Name"]) == name)
            if parse(VMState, vm["State"]) != VMState.Running:
                raise StopPostUpgrade(f"{name} is {vm['State']} after Start-VM")
            result.after, result.result = str(vm["Version"]), "updated"

    def _start_again(self, node: str, vm: str) -> None:
        try:
            state = next(v["State"] for v in self.client.vms(node) if str(v["Name"]) == vm)
            if parse(VMState, state) == VMState.Off:
                self.client.vm_call(node, "Start-VM", vm)
        except (RemoteError, StopIteration) as e:
            self.recorder.emit(node, "vm-start", "failed", vm=vm, error=f"could not start {vm} again: {e}")

    def second_hop(self) -> None:
        """Test-Cluster runs on one node and reaches every other (a second hop): proven before anything
        irreversible, or the run is refused up front with the fix. Otherwise it would throw only at the end,
        after the functional level and the pool were raised."""
        refused = self.client.second_hop()
        self.add("second hop for Test-Cluster", refused is None, "a node's session reaches the other nodes"
                 if refused is None else f"{refused}. Test-Cluster reaches every node from the one it runs on: "
                 "use auth: credssp in the inventory (Enable-WSManCredSSP -Role Server on the nodes), set up "
                 "resource-based constrained delegation, or run Test-Cluster on a node by hand")
        if refused is not None:
            raise StopPostUpgrade(f"second hop refused {refused}: Test-Cluster would fail after the irreversible "
                                  "steps; use auth: credssp (Enable-WSManCredSSP -Role Server on the nodes), "
                                  "resource-based constrained delegation, or run Test-Cluster on a node by hand. "
                                  "Nothing was changed")

    def add(self, check: str, ok: bool, detail: str, *, blocking: bool = True) -> None:
        finding = Finding(check, ok, detail, blocking)
        self.findings.append(finding)
        self.recorder.emit(None, "check", "succeeded" if ok else "failed", check=check, detail=detail,
                           blocking=blocking)


def validation_summary(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Test-Cluster's results per category: how many tests passed, warned, failed, and the names of the rest."""
    if not rows:
        return pd.DataFrame(columns=["Category", "Success", "Warning", "Failed", "not passed"])
    df = pd.DataFrame(rows)
    table = df.pivot_table(index="Category", columns="Result", values="Test", aggfunc="count", fill_value=0)
    for column in ("Success", "Warning", "Failed"):
        if column not in table:
            table[column] = 0
    others = df[df["Result"] != "Success"].groupby("Category")["Test"].agg(lambda t: "; ".join(t))
    table = table[["Success", "Warning", "Failed"]].join(others.rename("not passed")).fillna("")
    return table.reset_index()


def levels_table(before: Levels | None, after: Levels | None) -> pd.DataFrame:
    """The final report: functional level, pool version, each node's build and each VM's version, before and
    after."""
    rows: list[dict[str, Any]] = []
    if before is None:
        return pd.DataFrame(rows)
    after = after or before
    rows.append({"what": "cluster functional level", "before": before.functional_level,
                 "after": after.functional_level})
    rows.append({"what": f"pool version ({before.pool})", "before": before.pool_version,
                 "after": after.pool_version})
    rows += [{"what": f"build {n}", "before": b, "after": after.builds.get(n)} for n, b in before.builds.items()]
    rows += [{"what": f"VM {v}", "before": ver, "after": after.vm_versions.get(v)}
             for v, ver in before.vm_versions.items()]
    return pd.DataFrame(rows).astype(str)
