"""Cluster-Aware Updating on the simulated cluster: its clustered role, and an updating run that drains, installs,
restarts and resumes node by node on the simulated clock as CAU's orchestrator does. Every change goes through
SimCluster's own transitions, logged `by: "CAU"`, so the invariant checker (sim/audit.py) judges CAU as it judges
hci-upgrade.

Sources (reference/domain.md): the per-node pipeline, §1.2 ("What CAU does per node") and §5.2 (Invoke-CauRun's
docs: scan, move roles off, install, restart within RebootTimeoutMinutes, resume with FailbackMode, wait for
storage repair, next node; MaxRetriesPerNode retries the whole per-node process; the run stops when
MaxFailedNodes+1 nodes failed; StopAfter cancels it); suspend refused with ERROR_CLUSTER_SPACE_DEGRADED is retried
for SuspendClusterNodeTimeoutMinutes, not counted as a retry (§1.2 step 2); a run already in progress refuses a
second one with ERROR_CNU_RUN_ALREADY_IN_PROGRESS (§1.2.1); a run left Canceled makes Get-CauRun say RunFailed
until Invoke-CauRun -ForceRecovery (§1.2.1, TSG "Previous CAU run Canceled"); Get-CauRun's and Get-CauReport's
objects, §5.4 and §5.5; the RollingUpgradePlugin's NodeResults count 0 succeeded updates for a node that
succeeded (§5.4, Microsoft's sample). Where they leave doubt the harsher behaviour holds:
  * a node paused by someone else when its turn comes is not touched and counts as failed [UNVERIFIED];
  * Stop-CauRun ends the run at the node's next safe point: setup not yet past its first phase is stopped and the
    node resumed, a node restarting is waited for, then resumed [UNVERIFIED];
  * RebootTimeoutMinutes keeps CAU's default of 15: a feature update's restarts (40 min here) fail a node unless
    the caller raises it (§1.2.1 "The reboot exceeds RebootTimeoutMinutes ... the node counts as failed").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from hciupgrade.psenums import CauNodeStatus, CauResultStatus, CauRunState, DrainStatus, NodeState, ScheduledTaskState
from hciupgrade.sim.cluster import ERROR_CLUSTER_SPACE_DEGRADED, Refused, SimCluster

CAU = "CAU"  # who CAU's changes are logged as
ROLLING_UPGRADE = "Microsoft.RollingUpgradePlugin"
HOTFIX = "Microsoft.HotfixPlugin"
PLUGIN_TASKS = {ROLLING_UPGRADE: "CAU-RollingUpgradePlugin", HOTFIX: "CAU-HotfixPlugin"}
TICK_SECONDS = 30.0  # how often CAU's orchestrator looks at its node [INFER]
SCAN_SECONDS = 120.0  # "generating the list can take a few minutes" (§5.3) [INFER]
ERROR_CNU_RUN_ALREADY_IN_PROGRESS = 0x186E
RUN_ALREADY_IN_PROGRESS = "A cluster native update run is already in progress on the cluster."
NO_ROLE = "The current cluster is not configured with a Cluster-Aware Updating clustered role."


@dataclass
class CauSettings:
    """What a run is started with: the plug-in, its arguments (all strings) and CAU's options."""

    plugin: str
    arguments: dict[str, str]
    max_failed_nodes: int | None = None
    max_retries_per_node: int = 3
    node_order: list[str] | None = None
    require_all_nodes_online: bool = False
    reboot_timeout_minutes: float = 15
    failback: str = "Immediate"
    pre_update_script: str | None = None
    post_update_script: str | None = None
    stop_after_minutes: float | None = None
    warn_after_minutes: float | None = None
    suspend_timeout_minutes: float = 60  # SuspendClusterNodeTimeoutMinutes (no documented default) [INFER]
    repair_timeout_minutes: float | None = None  # WaitForStorageRepairTimeoutMinutes (none: wait)


@dataclass
class NodeRun:
    name: str
    status: CauNodeStatus = CauNodeStatus.Waiting
    since: float = 0.0  # when the node entered its status
    attempts: int = 0
    result: CauResultStatus | None = None
    error: str | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)  # InstallResults
    reboot: str | None = None  # RebootSummaryResult


@dataclass
class UpdatingRun:
    run_id: str
    started: float
    settings: CauSettings
    order: list[str]
    nodes: dict[str, NodeRun]
    orchestrator: str
    index: int = 0
    cancel_pending: bool = False
    warned: bool = False
    status: CauResultStatus | None = None
    error_id: str | None = None
    ended: float | None = None

    @property
    def current(self) -> NodeRun | None:
        return self.nodes[self.order[self.index]] if self.index < len(self.order) else None


class Cau:
    """CAU on one simulated cluster: its clustered role, the run in progress, the reports of the runs before."""

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self.role: dict[str, Any] | None = None
        self.run: UpdatingRun | None = None
        self.reports: list[dict[str, Any]] = []
        self.left_failed = False  # a run left Canceled: Get-CauRun says RunFailed until -ForceRecovery

    def now(self) -> float:
        """The simulated time of what CAU does: a timer's due time while it fires (a late advance() replays the
        ticks in order, each at its own time), else the clock's."""
        return self.sim._firing_at if self.sim._firing_at is not None else self.sim.now()

    # --- what Get-CauRun reads ----------------------------------------------------------------------------
    @property
    def state(self) -> CauRunState:
        if self.run is not None and self.run.status is None:
            return CauRunState.RunInProgress
        if self.left_failed:
            return CauRunState.RunFailed
        return CauRunState[self.sim.knobs.cau_run_state]  # a run left by someone outside the simulation

    # --- the clustered role (Add-/Set-/Remove-CauClusterRole) ------------------------------------------------
    def add_role(self, settings: CauSettings, group: str, *, by: str) -> None:
        self.role = {"GroupName": group, "settings": settings}
        self.sim._log("cau_role", None, status="added", group=group, plugin=settings.plugin, by=by)

    def set_role(self, settings: CauSettings, *, by: str) -> None:
        if self.role is None:
            raise Refused(NO_ROLE, 5013, None, "cau-role")
        self.role["settings"] = settings
        self.sim._log("cau_role", None, status="set", plugin=settings.plugin, by=by)

    def remove_role(self, *, by: str) -> None:
        if self.role is not None:
            self.sim._log("cau_role", None, status="removed", group=self.role["GroupName"], by=by)
            self.role = None

    # --- a run ----------------------------------------------------------------------------------------------
    def start(self, settings: CauSettings, *, by: str) -> UpdatingRun:
        """Start an updating run (Set-CauClusterRole -UpdateNow, or Invoke-CauRun): refused while one runs or
        while a canceled one is not recovered, and with RequireAllNodesOnline while a node is not Up."""
        sim = self.sim
        if self.state != CauRunState.RunNotInProgress:
            raise Refused(RUN_ALREADY_IN_PROGRESS, ERROR_CNU_RUN_ALREADY_IN_PROGRESS, None, "cau-run")
        names = list(sim.nodes)
        if settings.require_all_nodes_online:
            down = [n.name for n in sim.nodes.values() if n.state != NodeState.Up]
            if down:
                raise Refused(f"The updating run cannot start: RequireAllNodesOnline is set and node(s) "
                              f"{', '.join(down)} are not online.", 5050, down[0], "cau-run")
        if settings.node_order:
            order = [sim.node(n).name for n in settings.node_order]
            order += [n for n in names if n not in order]
        else:  # fewest roles first (§5.2: CAU chooses, by activity)
            roles = {n: sum(1 for vm in sim.vms.values() if vm.owner == n) for n in names}
            order = sorted(names, key=lambda n: (roles[n], names.index(n)))
        self.run = UpdatingRun(str(uuid.uuid4()),
                               self.now(), settings, order, {n: NodeRun(n, since=self.now()) for n in order},
                               orchestrator=order[-1])
        sim._log("cau_run", None, status="started", run_id=self.run.run_id, plugin=settings.plugin, order=order,
                 by=by)
        sim._after(TICK_SECONDS, self._tick, "cau-tick")
        return self.run

    def stop(self, *, by: str) -> None:
        """Stop-CauRun: the run is canceled at its node's next safe point."""
        if self.run is not None and self.run.status is None and not self.run.cancel_pending:
            self.run.cancel_pending = True
            self.sim._log("cau_run", None, status="cancel-pending", run_id=self.run.run_id, by=by)

    def recover(self, *, by: str) -> None:
        """Invoke-CauRun -ForceRecovery: the lock of a run left behind is cleared."""
        self.left_failed = False
        self.sim._log("cau_run", None, status="recovered", by=by)

    # --- CAU's orchestrator, a tick at a time -------------------------------------------------------------------
    def _tick(self) -> None:
        run = self.run
        if run is None or run.status is not None:
            return
        sim, s = self.sim, run.settings
        elapsed = self.now() - run.started
        if s.stop_after_minutes is not None and elapsed > s.stop_after_minutes * 60 and not run.cancel_pending:
            run.cancel_pending = True
            sim._log("cau_run", None, status="stop-after", run_id=run.run_id, by=CAU)
        if s.warn_after_minutes is not None and elapsed > s.warn_after_minutes * 60 and not run.warned:
            run.warned = True
            sim._log("cau_run", None, status="warn-after", run_id=run.run_id, by=CAU)
        node = run.current
        if node is None:
            self._finish(run)
            return
        self._step(run, node)
        if run.status is None:
            sim._after(TICK_SECONDS, self._tick, "cau-tick")

    def _set(self, node: NodeRun, status: CauNodeStatus) -> None:
        node.status, node.since = status, self.now()
        self.sim._log("cau_node", node.name, status=status.name, by=CAU)

    def _step(self, run: UpdatingRun, node: NodeRun) -> None:
        sim, s = self.sim, run.settings
        live = sim.node(node.name)
        waited = self.now() - node.since
        if node.status == CauNodeStatus.Waiting:
            if run.cancel_pending:
                return self._finish(run, CauResultStatus.Canceled)
            if live.state != NodeState.Up:  # not ours to take (paused by someone else, down): never touched
                who = f" (paused by {live.paused_by})" if live.state == NodeState.Paused else ""
                return self._node_failed(run, node, f"The node '{node.name}' is {live.state.name}{who}; it was "
                                                    "not updated.", retry=False)
            self._set(node, CauNodeStatus.Scanning)
        elif node.status == CauNodeStatus.Scanning:
            if waited < SCAN_SECONDS:
                return None
            if not self._applicable(run, node.name):
                return self._node_done(run, node)
            if run.cancel_pending:
                return self._finish(run, CauResultStatus.Canceled)
            if s.pre_update_script:
                try:
                    sim.run_node_script(node.name, s.pre_update_script, "Pre", by=CAU)
                except Refused as e:
                    return self._attempt_failed(run, node, str(e))
            self._set(node, CauNodeStatus.Suspending)
        elif node.status == CauNodeStatus.Suspending:
            if live.state == NodeState.Up:
                blocker = self._blocker(node.name)
                if blocker and waited < s.suspend_timeout_minutes * 60:
                    return None  # CAU keeps quorum and is storage-aware: no node leaves while another is out
                if blocker:
                    return self._attempt_failed(run, node, f"The node '{node.name}' was not paused: {blocker}.")
                try:
                    sim.suspend(node.name, drain=True, force_drain=False, by=CAU)
                except Refused as e:
                    if e.code == ERROR_CLUSTER_SPACE_DEGRADED and waited < s.suspend_timeout_minutes * 60:
                        return None  # retried for SuspendClusterNodeTimeoutMinutes; not a retry of the node
                    return self._attempt_failed(run, node, str(e))
                return None
            if live.drain_status == DrainStatus.Failed:
                return self._attempt_failed(run, node, f"The node '{node.name}' failed to drain.")
            if live.drain_status != DrainStatus.Completed:
                return None
            if run.cancel_pending:
                self._resume(run, node.name)
                return self._finish(run, CauResultStatus.Canceled)
            task = PLUGIN_TASKS[s.plugin]
            sim.register_update(node.name, task, self._source(s), by=CAU)
            sim.start_update(node.name, task, by=CAU)
            self._set(node, CauNodeStatus.Installing)
        elif node.status == CauNodeStatus.Installing:
            task = live.tasks[PLUGIN_TASKS[s.plugin]]
            if task.state == ScheduledTaskState.Running:
                if run.cancel_pending:  # setup's first phase changes nothing until a restart: stopped
                    sim.stop_update(node.name, PLUGIN_TASKS[s.plugin], by=CAU)
                    self._resume(run, node.name)
                    return self._finish(run, CauResultStatus.Canceled)
                return None
            if live.staged_build is None:
                node.updates.append(self._install_result(run, node.name, ok=False, code=task.last_result))
                return self._attempt_failed(run, node, f"The update failed to install on '{node.name}' (0x"
                                                       f"{task.last_result & 0xFFFFFFFF:08X}).")
            node.updates.append(self._install_result(run, node.name, ok=True, code=0))
            sim.restart(node.name, by=CAU)
            self._set(node, CauNodeStatus.Restarting)
        elif node.status == CauNodeStatus.Restarting:
            if live.os_running and live.state in (NodeState.Paused, NodeState.Up):
                node.reboot = "Succeeded"
                self._set(node, CauNodeStatus.Resuming)  # resumed at the next look
            elif waited > s.reboot_timeout_minutes * 60:
                node.reboot = "Failed"
                return self._node_failed(run, node, f"The node '{node.name}' did not restart within "
                                                    f"RebootTimeoutMinutes ({s.reboot_timeout_minutes:g}).",
                                         retry=False)
        elif node.status == CauNodeStatus.Resuming:
            if live.state not in (NodeState.Paused, NodeState.Up):  # gone again before its resume
                return self._node_failed(run, node, f"The node '{node.name}' is {live.state.name} after its "
                                                    "restart.", retry=False)
            self._resume(run, node.name)
            if s.post_update_script:
                try:
                    sim.run_node_script(node.name, s.post_update_script, "Post", by=CAU)
                except Refused as e:
                    return self._node_failed(run, node, str(e), retry=False)
            if run.cancel_pending:
                node.result = CauResultStatus.Succeeded
                return self._finish(run, CauResultStatus.Canceled)
            self._set(node, CauNodeStatus.WaitingForStorageRepair)
        elif node.status == CauNodeStatus.WaitingForStorageRepair:
            repairing = self._repairing()
            timed_out = s.repair_timeout_minutes is not None and waited > s.repair_timeout_minutes * 60
            if not repairing or timed_out or run.cancel_pending:
                self._node_done(run, node)
                if run.cancel_pending:
                    self._finish(run, CauResultStatus.Canceled)
        return None

    def _blocker(self, name: str) -> str | None:
        """Why taking the node out now would leave the cluster short (§5.2: CAU keeps quorum, never takes more
        nodes down than is safe; it waits for storage repair)."""
        other = next((n for n in self.sim.nodes.values() if n.name != name and n.state != NodeState.Up), None)
        if other is not None:
            return f"node {other.name} is {other.state.name}"
        return "storage is repairing" if self._repairing() else None

    def _repairing(self) -> bool:
        sim = self.sim
        return bool(sim.running_jobs()) or any(n.away_since is not None for n in sim.nodes.values())

    def _applicable(self, run: UpdatingRun, name: str) -> bool:
        """The scan: whether the plug-in has anything for the node (the target's build; the LCU's UBR)."""
        live = self.sim.node(name)
        if run.settings.plugin == ROLLING_UPGRADE:
            return live.number != self.sim.target_number
        return live.number == self.sim.target_number and live.ubr < int(self.sim.lcu_build.split(".")[3])

    @staticmethod
    def _source(s: CauSettings) -> str:
        return s.arguments.get("PathToSetupMedia") or s.arguments.get("HotfixRootFolderPath") or ""

    def _install_result(self, run: UpdatingRun, name: str, *, ok: bool, code: int) -> dict[str, Any]:
        title = "Windows Server feature update" if run.settings.plugin == ROLLING_UPGRADE else \
            "Cumulative Update for Microsoft server operating system"
        return {"UpdateTitle": title, "UpdateId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run.run_id}/{name}")),
                "ErrorCode": code, "UpdateResultCode": "Succeeded" if ok else "Failed"}

    def _resume(self, run: UpdatingRun, name: str) -> None:
        live = self.sim.node(name)
        if live.state == NodeState.Paused and live.paused_by == CAU:
            self.sim.resume(name, failback=run.settings.failback, by=CAU)

    def _attempt_failed(self, run: UpdatingRun, node: NodeRun, error: str) -> None:
        """The node's whole update is retried, up to MaxRetriesPerNode; the node is brought back first."""
        live = self.sim.node(node.name)
        task = live.tasks.get(PLUGIN_TASKS[run.settings.plugin])
        if task is not None and task.state == ScheduledTaskState.Running:
            self.sim.stop_update(node.name, PLUGIN_TASKS[run.settings.plugin], by=CAU)
        self._resume(run, node.name)
        node.attempts += 1
        node.error = error
        self.sim._log("cau_node", node.name, status="AttemptFailed", attempt=node.attempts, error=error, by=CAU)
        if node.attempts < run.settings.max_retries_per_node and not run.cancel_pending:
            self._set(node, CauNodeStatus.Waiting)
            return
        self._node_failed(run, node, error, retry=False)

    def _node_failed(self, run: UpdatingRun, node: NodeRun, error: str, *, retry: bool) -> None:
        node.result, node.error = CauResultStatus.Failed, error
        self.sim._log("cau_node", node.name, status="Failed", error=error, by=CAU)
        failed = sum(1 for n in run.nodes.values() if n.result == CauResultStatus.Failed)
        allowed = run.settings.max_failed_nodes
        if allowed is None:
            allowed = max(0, len(run.order) // 3)
        if failed > allowed:
            run.error_id = "MaxFailedNodesExceeded"
            self._finish(run, CauResultStatus.Failed)
            return
        run.index += 1

    def _node_done(self, run: UpdatingRun, node: NodeRun) -> None:
        node.result = CauResultStatus.Succeeded
        self.sim._log("cau_node", node.name, status="Succeeded", by=CAU)
        run.index += 1

    def _finish(self, run: UpdatingRun, status: CauResultStatus | None = None) -> None:
        if status is None:
            failed = any(n.result == CauResultStatus.Failed for n in run.nodes.values())
            status = CauResultStatus.PartiallyFailed if failed else CauResultStatus.Succeeded
        run.status, run.ended = status, self.now()
        if status == CauResultStatus.Canceled:
            self.left_failed = True
        self.reports.append(self.report(run))
        self.sim._log("cau_run", None, status=status.name, run_id=run.run_id, error_id=run.error_id, by=CAU)

    def report(self, run: UpdatingRun) -> dict[str, Any]:
        """The run's report as Get-CauReport -Detailed shapes it (its values; cmdlets/cau.py dresses them)."""
        return {"run_id": run.run_id, "started": run.started, "ended": run.ended, "status": run.status,
                "error_id": run.error_id, "plugin": run.settings.plugin,
                "nodes": [{"name": n.name, "error": n.error, "updates": list(n.updates), "reboot": n.reboot,
                           "status": n.result if n.result is not None else CauResultStatus.Canceled}
                          for n in run.nodes.values() if n.result is not None or n.status != CauNodeStatus.Waiting]}
