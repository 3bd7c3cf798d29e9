"""The simulated cluster: one state machine with a clock.

Rules of this module:
- Everything that changes the cluster's state lives here. Cmdlets (cmdlets/) call the request methods below;
  the fake endpoint (winrm.py) only asks whether a node is reachable.
- Time moves by `advance()`: due timers fire in order. Nothing here sleeps or touches a socket.
- A request the real cluster would refuse raises `Refused` naming the node, its state and the request, with the
  Win32 code the real cmdlet reports.
- Every change is appended to the event log (`events`), which is the audit trail the safety tests read.

The node lifecycle is a table (NODE_TRANSITIONS); the few moves that do not fit it are written out below it.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hciupgrade.psenums import (
    DrainStatus,
    HealthStatus,
    JobState,
    NodeState,
    NodeStatusInformation,
    OperationalStatus,
    ScheduledTaskState,
)
from hciupgrade.sim.clock import ScaledClock
from hciupgrade.sim.scenario import FaultKind, NodeReadiness, Scenario

GB = 1024**3
MB = 1024**2

# Win32 codes the real cmdlets report (winerror.h)
ERROR_CLUSTER_NODE_NOT_PAUSED = 5058
ERROR_CLUSTER_NODE_DOWN = 5050
ERROR_CLUSTER_NODE_DRAIN_IN_PROGRESS = 5962
ERROR_CLUSTER_SPACE_DEGRADED = 5987
ERROR_CLUSTER_UPGRADE_INCOMPLETE = 5977  # [INFER] a node not Up or not on the new OS: the level cannot be raised
TARGET_FUNCTIONAL_LEVEL = 12  # 23H2 (the environment checker's rule)
TARGET_VM_VERSION = "12.0"  # [INFER] the default VM configuration version of a 23H2 host (Get-VMHostSupportedVersion)
SOURCE_VM_VERSION = "10.0"  # the default of Windows Server 2022 / 22H2 hosts (Microsoft's supported-versions table)
SETUP_FAILED_ROLLED_BACK = 0xC1900101  # setup.exe: "the installation failed ... rolled back"
SCHED_S_TASK_RUNNING = 0x41301
SCHED_S_TASK_TERMINATED = 0x41306

FEATURE_UPDATE_TASK = "HciUpgrade-FeatureUpdate"
CUMULATIVE_UPDATE_TASK = "HciUpgrade-CumulativeUpdate"
# CAU's plug-ins install through the same Windows machinery (sim/cau.py): setup for the RollingUpgradePlugin,
# wusa for the HotfixPlugin's .msu
TASK_KINDS = {FEATURE_UPDATE_TASK: "feature", CUMULATIVE_UPDATE_TASK: "cumulative",
              "CAU-RollingUpgradePlugin": "feature", "CAU-HotfixPlugin": "cumulative"}
# wusa.exe exit codes (winerror.h / wuerror.h)
ERROR_SUCCESS_REBOOT_REQUIRED = 3010
WU_S_ALREADY_INSTALLED = 0x240006
WU_E_NOT_APPLICABLE = 0x80240017
ERROR_INSTALL_FAILURE = 0x80070643
MARKER_KEY = r"HKLM:\SOFTWARE\hci-upgrade"  # the orchestrator's mark on a node it paused (Suspend-NodeForUpgrade.ps1)
# the newest fence a run of hci-upgrade showed the node (Set-UpgradeOwner.ps1, Suspend-NodeForUpgrade.ps1)
FENCE_KEY = r"HKLM:\SOFTWARE\hci-upgrade-fence"

# --- node lifecycle --------------------------------------------------------------------------------------------
# (state, event) -> new state, the cluster's view of a node. Events: pause, resume, restart (the OS goes down),
# boot (the OS is back and the cluster service joins), stop (Stop-Cluster), start (Start-Cluster). The join is
# special (below): the node comes back Paused if it was paused before the restart. A node whose cluster service
# is stopped or Disabled stays Down while its OS (and WinRM) runs: `os_running` is the OS, `state` the cluster's.
NODE_TRANSITIONS: dict[tuple[NodeState, str], NodeState] = {
    (NodeState.Up, "pause"): NodeState.Paused,
    (NodeState.Paused, "resume"): NodeState.Up,
    (NodeState.Up, "restart"): NodeState.Down,
    (NodeState.Paused, "restart"): NodeState.Down,
    (NodeState.Down, "boot"): NodeState.Joining,
    (NodeState.Up, "stop"): NodeState.Down,
    (NodeState.Paused, "stop"): NodeState.Down,
    (NodeState.Down, "start"): NodeState.Joining,
}


class Refused(Exception):
    """A request the real cluster refuses. `code` is the Win32 error the cmdlet surfaces."""

    def __init__(self, message: str, code: int, node: str | None = None, request: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.node = node
        self.request = request


@dataclass
class Vm:
    name: str
    owner: str
    memory_gb: float
    dynamic_memory: bool
    state: str = "Online"  # cluster group state name
    version: str = "10.0"  # the VM configuration version (Windows Server 2022 / 22H2)
    running: bool = True  # Hyper-V's view: Running or Off
    locked_console: bool = False  # Stop-VM without -Force prompts (a remote session cannot answer)
    hyperv_state: str | None = None  # a state other than Running and Off that the scenario gave it (Saved, ...)


@dataclass
class UpdateTask:
    """A scheduled task that installs an update: setup.exe's down-level phase (feature) or wusa.exe with an
    .msu (cumulative)."""

    kind: str = "feature"  # feature | cumulative
    state: ScheduledTaskState = ScheduledTaskState.Ready
    last_result: int = 0x41303  # SCHED_S_TASK_HAS_NOT_RUN
    last_run_time: float | None = None
    path: str = ""


@dataclass
class Node:
    name: str
    state: NodeState
    build: str
    drain_status: DrainStatus = DrainStatus.NotInitiated
    status_information: NodeStatusInformation = NodeStatusInformation.Normal
    paused_by: str | None = None
    was_paused_at_restart: bool = False
    away_since: float | None = None  # storage: when its drives stopped taking writes
    winrm_up: bool = True
    staged_build: str | None = None  # an update finished its first phase; the next restart installs this
    staged_kind: str = ""  # feature (setup's offline phases at the restart) or cumulative
    tasks: dict[str, UpdateTask] = field(default_factory=dict)
    returns: bool = True  # False: the node never comes back from its next restart
    late_seconds: float = 0.0  # its next restart takes this much longer (the slow_return fault, once)
    marker: dict[str, Any] | None = None  # values under MARKER_KEY in the node's registry
    fence: dict[str, Any] | None = None  # values under FENCE_KEY: Fence (the newest run's number), RunId
    os_running: bool = True  # the OS runs (WinRM can answer), whatever the cluster service does
    clussvc_startup: str = "Automatic"  # the cluster service's StartupType (Set-Service clussvc)
    workloads_held: list[str] = field(default_factory=list)  # Stop-NodeWorkloads.ps1's list (StoppedVMs)
    files: dict[str, str] = field(default_factory=dict)  # path (lower case) -> what it holds: a packaged script's name

    @property
    def number(self) -> str:
        return self.build.split(".")[2]

    @property
    def ubr(self) -> int:
        return int(self.build.split(".")[3])


@dataclass
class VirtualDisk:
    name: str
    size: int
    resiliency: str
    health: HealthStatus = HealthStatus.Healthy
    operational: tuple[OperationalStatus, ...] = (OperationalStatus.OK,)


@dataclass
class StorageJob:
    name: str
    disk: str
    bytes_total: int
    started: float
    state: JobState = JobState.Running
    bytes_processed: float = 0.0
    stall_at: float | None = None  # fraction at which it stops making progress
    ended: float | None = None

    @property
    def percent(self) -> int:
        return int(100 * self.bytes_processed / self.bytes_total) if self.bytes_total else 100


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)
    label: str = field(compare=False, default="")


class SimCluster:
    """The state of one cluster and every transition it allows."""

    def __init__(self, scenario: Scenario, clock: ScaledClock | None = None) -> None:
        self.scenario = scenario
        spec = scenario.cluster
        self.name = spec.name
        self.clock = clock or ScaledClock(scenario.time_factor)
        self.knobs = scenario.knobs
        self.durations = scenario.durations
        self.lock = threading.RLock()
        self.events: list[dict[str, Any]] = []
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._acting: dict[str, Any] = {}  # the run and fence an owned script acts for: in every event it logs
        self._timers: list[_Timer] = []
        self._firing_at: float | None = None
        self._seq = itertools.count()
        self.cluster_running = True
        self._service_running: set[str] = set()  # nodes whose cluster service was started while it was stopped
        self.csv_online: dict[str, bool] = {v.name: True for v in spec.volumes}
        self.functional_level = spec.functional_level
        self.pool_version = spec.pool_version
        self.target_build = spec.target_build
        self.target_number = spec.target_build.split(".")[2]
        self.cloud_management = spec.cloud_management_group
        self.nodes: dict[str, Node] = {}
        for n in spec.nodes:
            node = Node(name=n.name, state=NodeState[n.state], build=n.build or spec.build)
            if node.state == NodeState.Paused:
                node.paused_by = "operator"
                node.drain_status = DrainStatus.Completed
                node.away_since = 0.0 if self.knobs.storage_maintenance_mode else None
            node.winrm_up = scenario.faults_for(n.name, FaultKind.winrm_refused) is None
            node.returns = scenario.faults_for(n.name, FaultKind.no_return) is None
            slow = scenario.faults_for(n.name, FaultKind.slow_return)
            node.late_seconds = slow.late_minutes * 60 if slow else 0.0
            self.nodes[n.name] = node
        self.vms = {v.name: Vm(v.name, v.owner, v.memory_gb, v.dynamic_memory, locked_console=v.locked_console,
                               running=v.state == "Running", state="Online" if v.state == "Running" else "Offline",
                               hyperv_state=None if v.state in ("Running", "Off") else v.state)
                    for v in spec.vms}
        self.disks = {
            v.name: VirtualDisk(v.name, int(v.size_gb * GB), v.resiliency) for v in spec.volumes
        }
        self.pool_size = int(sum(v.size_gb for v in spec.volumes) * GB * 2.5)
        self.jobs: list[StorageJob] = []
        self._job_ids = itertools.count(1)
        self._strikes: dict[tuple[str, FaultKind], int] = {}
        self.checker_installed: set[str] = set()
        from hciupgrade.sim.cau import Cau  # it drives this class's transitions

        self.cau = Cau(self)
        self.readiness = {name: scenario.readiness.nodes[name].model_copy(deep=True)
                          if name in scenario.readiness.nodes else NodeReadiness() for name in self.nodes}
        self._refresh_storage_health()

    # --- time -----------------------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def advance(self) -> None:
        """Fire every timer that is due, in order, and bring storage jobs up to date."""
        with self.lock:
            now = self.now()
            while self._timers and self._timers[0].due <= now:
                timer = heapq.heappop(self._timers)
                self._firing_at = timer.due  # what it schedules counts from when it was due, not from now
                try:
                    timer.action()
                finally:
                    self._firing_at = None
            self._progress_jobs(now)

    def _after(self, seconds: float, action: Callable[[], None], label: str = "") -> None:
        base = self._firing_at if self._firing_at is not None else self.now()
        heapq.heappush(self._timers, _Timer(base + seconds, next(self._seq), action, label))

    # --- the audit trail --------------------------------------------------------------------------------------
    def on_event(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._event_listeners.append(listener)

    def _log(self, kind: str, node: str | None = None, **details: Any) -> None:
        event = {"seq": len(self.events), "t": round(self.now(), 3), "kind": kind, "node": node, **self._acting,
                 **details}
        self.events.append(event)
        for listener in self._event_listeners:
            listener(event)

    # --- node lifecycle ---------------------------------------------------------------------------------------
    def _move(self, node: Node, event: str, by: str) -> None:
        new = NODE_TRANSITIONS.get((node.state, event))
        if new is None:
            raise Refused(
                f"The cluster node '{node.name}' is {node.state.name} and cannot {event}.",
                ERROR_CLUSTER_NODE_DOWN, node.name, event,
            )
        self._set_state(node, new, by, event)

    def _set_state(self, node: Node, new: NodeState, by: str, cause: str) -> None:
        old = node.state
        node.state = new
        self._log("node_state", node.name, old=old.name, new=new.name, by=by, cause=cause)

    def node(self, name: str) -> Node:
        for node in self.nodes.values():
            if node.name.lower() == name.lower():
                return node
        raise KeyError(name)

    def reachable(self, name: str) -> bool:
        """Whether the node's WinRM endpoint accepts connections now."""
        node = self.nodes[name]
        return node.winrm_up and node.os_running

    def strikes(self, node: str, kind: FaultKind) -> Any:
        """The fault of this kind on `node` if it strikes now (a fault with `times` strikes that often)."""
        fault = self.scenario.faults_for(node, kind)
        if fault is None:
            return None
        count = self._strikes.get((node, kind), 0)
        if fault.times is not None and count >= fault.times:
            return None
        self._strikes[(node, kind)] = count + 1
        return fault

    # --- requests (what the cmdlets ask for) ------------------------------------------------------------------
    def storage_degraded_reason(self, excluding: str) -> str | None:
        """Why pausing a node now would leave a clustered space without redundancy (None: it would not)."""
        for other in self.nodes.values():
            if other.name != excluding and other.state != NodeState.Up:
                return f"node {other.name} is {other.state.name}"
        for job in self.jobs:
            if job.state not in (JobState.Completed, JobState.Terminated, JobState.Killed):
                return f"storage job {job.name} on {job.disk} is {job.state.name}"
        for disk in self.disks.values():
            if disk.health != HealthStatus.Healthy:
                return f"virtual disk {disk.name} is {disk.health.name}"
        return None

    def suspend(self, name: str, *, drain: bool, force_drain: bool, by: str) -> Node:
        node = self.node(name)
        if node.state == NodeState.Paused:
            if drain and node.drain_status == DrainStatus.InProgress:
                raise Refused(
                    f"The node '{node.name}' is already being drained.",
                    ERROR_CLUSTER_NODE_DRAIN_IN_PROGRESS, node.name, "suspend",
                )
            if not drain or node.drain_status == DrainStatus.Completed:
                return node  # pausing a paused node changes nothing
        elif node.state != NodeState.Up:
            raise Refused(f"The cluster node '{node.name}' is {node.state.name}.", ERROR_CLUSTER_NODE_DOWN,
                          node.name, "suspend")
        else:
            reason = self.storage_degraded_reason(excluding=node.name)
            if reason:
                self._log("suspend_refused", node.name, by=by, reason=reason)
                raise Refused(
                    "A clustered space is in a degraded condition and the requested action cannot be completed "
                    "at this time.",
                    ERROR_CLUSTER_SPACE_DEGRADED, node.name, "suspend",
                )
            self._pause(node, by, drain=drain, force_drain=force_drain, storage_busy=False, others_up=True)
            return node
        if drain:
            self._start_drain(node, force=force_drain, by=by)
        return node

    def _pause(self, node: Node, by: str, *, drain: bool, force_drain: bool, **checked: Any) -> None:
        """An Up node becomes Paused by `by` (its drives into maintenance on 21H2+), then drains if asked."""
        self._log("suspend", node.name, by=by, drain=drain, force_drain=force_drain, **checked)
        self._move(node, "pause", by)
        node.paused_by = by
        if self.knobs.storage_maintenance_mode:
            self._drives_leave(node)
        if drain:
            self._start_drain(node, force=force_drain, by=by)

    def _start_drain(self, node: Node, *, force: bool, by: str) -> None:
        node.drain_status = DrainStatus.InProgress
        node.status_information = NodeStatusInformation.DrainInProgress
        self._log("drain", node.name, status="InProgress", force=force, by=by)
        targets = [n.name for n in self.nodes.values() if n.state == NodeState.Up and n.name != node.name]
        mine = [vm for vm in self.vms.values() if vm.owner == node.name]
        fault = self.strikes(node.name, FaultKind.drain_fails) if mine else None
        stuck = None
        if fault and mine:
            stuck = fault.vm or mine[0].name
        elapsed = 0.0
        staging = {n.name for n in self.nodes.values() if any(
            t.kind == "feature" and t.state == ScheduledTaskState.Running for t in n.tasks.values())}
        for i, vm in enumerate(mine):
            target = targets[i % len(targets)] if targets else None
            slow = self.knobs.staging_slowdown if {node.name, target} & staging else 1.0
            if not vm.running:  # [INFER] an Off VM's group moves as it is: no memory to copy, nothing to refuse
                elapsed += self.durations.vm_move_overhead_s
                if target is None:
                    self._after(elapsed, lambda vm=vm: self._drain_failed(node, vm), "drain-fail")
                    return
                self._after(elapsed, lambda vm=vm, t=target: self._vm_moved(vm, t, failed=False))
                continue
            move = self.durations.vm_move_overhead_s + vm.memory_gb / self.durations.live_migration_gb_per_s
            elapsed += move * slow
            refused = vm.name == stuck or (target is not None and self._mixed_refused(node.name, target))
            if target is None or (refused and not force):
                self._after(elapsed, lambda vm=vm: self._drain_failed(node, vm), "drain-fail")
                return
            self._after(elapsed, lambda vm=vm, t=target, f=refused: self._vm_moved(vm, t, failed=f))
        self._after(elapsed + 1, lambda: self._drain_done(node), "drain-done")

    def _mixed_refused(self, source: str, target: str) -> bool:
        """A live migration between nodes on different OS builds, refused under the harsher knob (Knobs)."""
        return self.knobs.mixed_version_migration == "fails" and \
            self.node(source).number != self.node(target).number

    def _vm_moved(self, vm: Vm, target: str, *, failed: bool) -> None:
        old = vm.owner
        vm.owner = target
        if failed:  # -ForceDrain moves a VM that cannot live-migrate as failed
            vm.state, vm.running = "Offline", False
        self._log("vm_moved", old, vm=vm.name, to=target, live=vm.running)

    def _drain_failed(self, node: Node, vm: Vm) -> None:
        if node.drain_status != DrainStatus.InProgress:
            return
        node.drain_status = DrainStatus.Failed
        node.status_information = NodeStatusInformation.DrainFailed
        self._log("drain", node.name, status="Failed", vm=vm.name)

    def _drain_done(self, node: Node) -> None:
        if node.drain_status != DrainStatus.InProgress:
            return
        node.drain_status = DrainStatus.Completed
        node.status_information = NodeStatusInformation.DrainCompleted
        self._log("drain", node.name, status="Completed")

    def resume(self, name: str, *, failback: str, by: str) -> Node:
        node = self.node(name)
        if node.state != NodeState.Paused:
            if self.knobs.resume_not_paused == "error":
                raise Refused(f"The cluster node '{node.name}' is not paused.", ERROR_CLUSTER_NODE_NOT_PAUSED,
                              node.name, "resume")
            return node
        self._log("resume", node.name, by=by, failback=failback, paused_by=node.paused_by)
        self._move(node, "resume", by)
        node.paused_by = None
        node.drain_status = DrainStatus.NotInitiated
        node.status_information = NodeStatusInformation.Normal
        if self.knobs.storage_maintenance_mode:
            self._drives_return(node)
        if failback in ("Immediate", "Policy"):
            self._fail_back(node)
        return node

    def _fail_back(self, node: Node) -> None:
        home = {vm.name: vm.owner for vm in self.vms.values()}
        spec_owner = {v.name: v.owner for v in self.scenario.cluster.vms}
        for vm in self.vms.values():
            if spec_owner.get(vm.name) == node.name and home[vm.name] != node.name:
                if vm.running and self._mixed_refused(vm.owner, node.name):
                    self._log("vm_move_failed", vm.owner, vm=vm.name, to=node.name, reason="mixed OS versions")
                    continue  # a failed failback leaves the VM running where it is
                self._vm_moved(vm, node.name, failed=False)

    def operator_pause(self, name: str, *, drain: bool = True, by: str = "operator") -> bool:
        """Someone other than the orchestrator pauses an Up node (maintenance, a hardware swap): the pause an
        orchestrator must never take over. Not gated on storage, as an operator's own judgement is not ours to
        model. True if the node was paused."""
        node = self.node(name)
        if node.state != NodeState.Up:
            return False
        self._pause(node, by, drain=drain, force_drain=False, storage_busy=None, others_up=None)
        return True

    def mark_pause(self, name: str, values: dict[str, str], *, by: str) -> None:
        """The orchestrator writes its mark under MARKER_KEY on the node, before it pauses it."""
        node = self.node(name)
        node.marker = dict(values)
        self._log("mark", node.name, by=by, status="set", run=values.get("PausedByRun"))

    @contextmanager
    def acting_for(self, run: str, fence: int) -> Iterator[None]:
        """What an owned script changes is logged with the run and fence it was sent by: the audit judges by them
        whether a run acted after a newer one took the cluster over (invariant 8)."""
        self._acting = {"run": run, "fence": fence}
        try:
            yield
        finally:
            self._acting = {}

    def claim_fence(self, name: str, run: str, fence: int, *, by: str) -> None:
        """A run shows the node its fence (FENCE_KEY); an older one is never written over a newer one."""
        node = self.node(name)
        if node.fence is not None and int(node.fence["Fence"]) >= fence:
            return
        node.fence = {"Fence": fence, "RunId": run}
        self._log("fence", node.name, by=by, status="claimed")

    def take_over_mark(self, name: str, dead_run: str, *, by: str) -> None:
        """The mark of a run known dead becomes the acting run's: only it may change the node from now on."""
        node = self.node(name)
        if node.marker is not None and node.marker.get("PausedByRun") == dead_run and self._acting:
            node.marker = {**node.marker, "PausedByRun": self._acting["run"], "Fence": self._acting["fence"]}
            self._log("mark", node.name, by=by, status="taken-over", previous=dead_run)

    def fenced_out(self, name: str, reason: str, *, by: str) -> None:
        """An owned script refused its run (a newer fence, or not its mark): nothing changed, the refusal is kept."""
        self._log("fenced_out", self.node(name).name, by=by, reason=reason)

    def clear_mark(self, name: str, *, by: str) -> None:
        node = self.node(name)
        if node.marker is not None:
            node.marker = None
            self._log("mark", node.name, by=by, status="removed")

    def restart(self, name: str, *, by: str) -> None:
        """Restart-Computer: the OS goes down now; setup's offline phases run if a feature update is staged."""
        node = self.node(name)
        node.was_paused_at_restart = node.state == NodeState.Paused
        self._log("restart", node.name, by=by, staged_build=node.staged_build, staged_kind=node.staged_kind)
        node.os_running = False
        if node.state != NodeState.Down:  # a node of a stopped cluster is Down already
            for vm in self.vms.values():
                if vm.owner == node.name:  # not drained: roles fail over the hard way
                    self._vm_moved(vm, self._any_up_node(exclude=node.name) or node.name, failed=True)
            self._move(node, "restart", by)
            if node.away_since is None:
                self._drives_leave(node)
        self._refresh_storage_health()
        if not node.returns:
            return
        late, node.late_seconds = node.late_seconds, 0.0
        if node.staged_build and node.staged_kind == "feature":
            # setup's offline phases: several restarts with no WinRM in between, then the first boot of the new
            # build; to the outside one long Down (reference/anchors.md §3)
            restarts, total = self.durations.feature_update_restarts, self.durations.feature_update_restart_minutes * 60
            for i in range(1, restarts):
                self._after(total * i / restarts, lambda i=i: self._log("setup_phase", node.name, restart=i + 1,
                                                                       of=restarts), "setup-phase")
            self._after(total + late, lambda: self._boot(node), "boot")
        else:
            self._after(self.durations.reboot_minutes * 60 + late, lambda: self._boot(node), "boot")

    def _any_up_node(self, exclude: str) -> str | None:
        return next((n.name for n in self.nodes.values() if n.state == NodeState.Up and n.name != exclude), None)

    def _boot(self, node: Node) -> None:
        if node.staged_build:
            old, node.build, node.staged_build, node.staged_kind = node.build, node.staged_build, None, ""
            self._log("build", node.name, old=old, new=node.build)
        readiness = self.readiness[node.name]
        if readiness.pending_features:  # InstallPending features complete at boot
            done = set(readiness.pending_features)
            readiness.missing_features[:] = [f for f in readiness.missing_features if f not in done]
            readiness.pending_features.clear()
            self._log("features_installed", node.name, features=sorted(done), at="boot")
        node.os_running = True
        if not self.cluster_running or node.clussvc_startup == "Disabled":
            self._log("os_up", node.name, cluster_service="stopped")  # WinRM answers; the cluster has it Down
            return
        self._move(node, "boot", "system")
        self._after(self.durations.join_seconds, lambda: self._joined(node), "joined")

    def _joined(self, node: Node) -> None:
        # Special case: the pause persists across a restart, so a node paused before it comes back Paused.
        self._set_state(node, NodeState.Paused if node.was_paused_at_restart else NodeState.Up, "system", "join")
        if not node.was_paused_at_restart or not self.knobs.storage_maintenance_mode:
            # Pre-21H2 behaviour (knob): the drives rejoin as soon as the node is back, and repair starts now.
            self._drives_return(node)

    # --- updates installed by a scheduled task: the feature update (setup.exe's down-level phase) and the
    # cumulative update (wusa.exe <msu> /quiet /norestart); the restart is the orchestrator's to decide ----------
    def register_update(self, name: str, task_name: str, path: str, *, by: str) -> UpdateTask:
        node = self.node(name)
        task = node.tasks.get(task_name)
        if task is None or task.state != ScheduledTaskState.Running:
            node.tasks[task_name] = task = UpdateTask(kind=TASK_KINDS[task_name], path=path)
            self._log("task_registered", node.name, by=by, task=task_name, path=path)
        return task

    def start_update(self, name: str, task_name: str, *, by: str) -> None:
        node = self.node(name)
        task = node.tasks[task_name]
        if task.state == ScheduledTaskState.Running:
            return
        task.state = ScheduledTaskState.Running
        task.last_run_time = self.now()
        run = task.last_run_time
        if self.knobs.task_start_lag_seconds:  # a task just started still reads its last result for a while
            self._after(self.knobs.task_start_lag_seconds, lambda: self._task_launched(task, run), "task-launched")
        else:
            task.last_result = SCHED_S_TASK_RUNNING
        self._log("install", node.name, status="Running", by=by, update=task.kind)
        if task.kind == "feature":
            fault = self.strikes(node.name, FaultKind.install_fails)
            minutes, code, at = self.install_minutes(node.name), SETUP_FAILED_ROLLED_BACK, None
            if node.state == NodeState.Up:  # staged in service: setup competes with the VMs for CPU and I/O
                minutes *= self.knobs.staging_slowdown
        else:
            fault = self.strikes(node.name, FaultKind.lcu_fails)
            minutes, code = self.durations.lcu_install_minutes, ERROR_INSTALL_FAILURE
            if node.number != self.target_number:
                fault, code, at = None, WU_E_NOT_APPLICABLE, 0.02  # the target's package on a 22H2 node
            elif node.ubr >= int(self.lcu_build.split(".")[3]):
                fault, code, at = None, WU_S_ALREADY_INSTALLED, 0.1
            else:
                code, at = (code, None) if fault else (ERROR_SUCCESS_REBOOT_REQUIRED, None)
        if fault:
            self._after(minutes * 60 * fault.at_percent / 100,
                        lambda: self._install_ended(node, task_name, code, run), "install-fail")
        elif task.kind == "feature":
            self._after(minutes * 60, lambda: self._install_ended(node, task_name, 0, run), "install-done")
        else:
            self._after(minutes * 60 * (at or 1), lambda: self._install_ended(node, task_name, code, run),
                        "install-done")

    @staticmethod
    def _task_launched(task: UpdateTask, run: float) -> None:
        if task.state == ScheduledTaskState.Running and task.last_run_time == run:
            task.last_result = SCHED_S_TASK_RUNNING

    def install_minutes(self, name: str) -> float:
        """Setup's down-level phase on this node: install_minutes plus a share of the spread that is fixed per
        node (so a scenario replays the same way)."""
        share = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return self.durations.install_minutes + self.durations.install_spread_minutes * share

    @property
    def lcu_build(self) -> str:
        return self.scenario.cluster.lcu_build

    def stop_update(self, name: str, task_name: str, *, by: str) -> None:
        """Stop-ScheduledTask: the installer is killed in its first phase; nothing is staged."""
        node = self.node(name)
        task = node.tasks.get(task_name)
        if task is not None and task.state == ScheduledTaskState.Running:
            task.state = ScheduledTaskState.Ready
            task.last_result = SCHED_S_TASK_TERMINATED
            task.last_run_time = None
            self._log("install", node.name, status="Stopped", by=by, update=task.kind)

    def _install_ended(self, node: Node, task_name: str, code: int, run: float | None) -> None:
        task = node.tasks[task_name]
        if task.last_run_time != run or task.state != ScheduledTaskState.Running:
            return  # this run was stopped
        task.state = ScheduledTaskState.Ready
        task.last_result = code
        if task.kind == "feature":
            ok = code in self.knobs.setup_success_codes
            if ok:
                spec = next(n for n in self.scenario.cluster.nodes if n.name == node.name)
                node.staged_build, node.staged_kind = spec.media_build or self.target_build, "feature"
                # setup's staged state runs at the next restart, whoever causes it (reference/domain.md §1.3:
                # the down-level phase, then the offline phases at the restart)
                unplanned = self.strikes(node.name, FaultKind.restarts_after_staging)
                if node.state == NodeState.Up and unplanned:
                    # Windows restarts a staged node on its own (a policy, a crash, a hand): the offline phases
                    # run and it comes back on the new build, never drained
                    self._after(unplanned.after_minutes * 60, lambda: self.restart(node.name, by="system"),
                                "unplanned-restart")
        else:
            ok = code in (0, ERROR_SUCCESS_REBOOT_REQUIRED, WU_S_ALREADY_INSTALLED)
            if code in (0, ERROR_SUCCESS_REBOOT_REQUIRED):
                node.staged_build, node.staged_kind = self.lcu_build, "cumulative"
        self._log("install", node.name, status="Completed" if ok else "Failed", code=code, update=task.kind)

    # --- the whole cluster: the offline path (Stop-Cluster, Start-Cluster, CSVs, the cluster service) -----------
    def set_csv(self, disk: str, online: bool, *, by: str) -> None:
        if online and not self.cluster_running:
            raise Refused(f"The cluster resource 'Cluster Virtual Disk ({disk})' could not be brought online: "
                          "the cluster service is not running.", 5050, None, "csv-online")
        if self.csv_online[disk] != online:
            self.csv_online[disk] = online
            if not online:  # what runs on the volume stops with it
                for vm in self.vms.values():
                    if vm.running:
                        vm.running, vm.state = False, "Failed"
                        self._log("vm", vm.owner, vm=vm.name, status="Crashed", by=by, reason=f"{disk} offline")
            self._log("csv", None, disk=disk, online=online, by=by)
            self._refresh_storage_health()

    def stop_cluster(self, *, by: str) -> None:
        """Stop-Cluster: the cluster service stops on every node; roles, CSVs and the pool go offline."""
        if not self.cluster_running:
            return
        for disk in self.csv_online:
            self.set_csv(disk, False, by=by)
        self.cluster_running = False
        self._service_running.clear()
        for node in self.nodes.values():
            node.away_since = None  # nothing writes while the whole cluster is stopped: no resync to come
            if node.state in (NodeState.Up, NodeState.Paused):
                self._move(node, "stop", by)
        self._log("cluster", None, status="Stopped", by=by)
        self._refresh_storage_health()

    def start_cluster(self, *, by: str, on: str | None = None) -> list[str]:
        """Start-Cluster run on node `on`: the cluster service starts there, and on the other nodes only if the
        call may reach them (a second hop: its docs say it cannot be run remotely without CredSSP; knob
        `second_hop`). Returns the nodes it could not reach. Without `on`, every node (a console on a node)."""
        local = [self.node(on)] if on else list(self.nodes.values())
        others = [n for n in self.nodes.values() if n not in local]
        reached = local + (others if self.knobs.second_hop == "allowed" else [])
        for node in reached:
            if node.os_running and node.clussvc_startup != "Disabled":
                self.start_node_service(node.name, by=by)
        return [n.name for n in others if n not in reached]

    def start_node_service(self, name: str, *, by: str) -> None:
        """The cluster service started on the node itself (Start-Service ClusSvc in its own session: no second
        hop). The cluster forms once a majority of the votes run it (the witness counts); until then a started
        node waits Down for quorum rather than refusing (reference/domain.md §3.7)."""
        node = self.node(name)
        if node.clussvc_startup == "Disabled":
            raise Refused(f"Service 'Cluster Service (ClusSvc)' cannot be started due to the following error: "
                          f"Cannot start service ClusSvc on computer '{node.name}'.", 1058, node.name,
                          "start-service")
        if node.name not in self._service_running:
            self._service_running.add(node.name)
            self._log("service", node.name, name="ClusSvc", status="Running", by=by)
        votes = len(self.nodes) + (0 if self.knobs.witness == "none" else 1)
        if not self.cluster_running and \
                len(self._service_running) + (0 if self.knobs.witness == "none" else 1) > votes / 2:
            self.cluster_running = True
            self._log("cluster", None, status="Started", by=by)
        if self.cluster_running:
            for started in (self.nodes[n] for n in sorted(self._service_running)):
                if started.state == NodeState.Down and started.os_running:
                    started.was_paused_at_restart = False
                    self._move(started, "start", by)
                    self._after(self.durations.join_seconds, lambda node=started: self._joined(node), "joined")
        self._refresh_storage_health()

    def set_cluster_service(self, name: str, startup: str, *, by: str) -> None:
        node = self.node(name)
        if node.clussvc_startup != startup:
            node.clussvc_startup = startup
            self._log("service", node.name, name="ClusSvc", startup=startup, by=by)

    # --- what readiness and its remediation ask of a node (the cmdlets translate; the state changes here) --------
    def record_validation(self, *, by: str) -> None:
        self._log("validation", None, by=by)

    def install_checker_module(self, name: str, module: str, *, by: str) -> None:
        self.checker_installed.add(name)
        self._log("module_installed", name, module=module, by=by)

    def install_features(self, name: str, names: list[str], *, no_restart: set[str], by: str) -> tuple[list[str], bool]:
        """Install-WindowsFeature: a feature that needs no restart is there at once, the others are InstallPending
        until the node restarts. Returns what was added, and whether a restart is pending."""
        state = self.readiness[name]
        added = [n for n in names if n in state.missing_features and n not in state.pending_features]
        now = [n for n in added if n in no_restart]
        state.missing_features[:] = [f for f in state.missing_features if f not in now]
        state.pending_features += [n for n in added if n not in now]
        if added:
            self._log("features_installed", name, features=now, pending=[n for n in added if n not in now], by=by)
        return added, bool(state.pending_features)

    def set_bitlocker(self, name: str, protection: str, *, by: str, reboot_count: Any = None) -> str:
        """Suspend-BitLocker (Off) or Resume-BitLocker (On) on C:; a volume without protection stays as it is."""
        state = self.readiness[name]
        if {"Off": "On", "On": "Off"}.get(state.bitlocker_protection) == protection:
            state.bitlocker_protection = protection
            extra = {"reboot_count": reboot_count} if protection == "Off" else {}
            self._log("bitlocker", name, status="Suspended" if protection == "Off" else "Resumed", **extra, by=by)
        return state.bitlocker_protection

    def set_registry_value(self, name: str, key: str, value_name: str, value: int, *, by: str) -> None:
        self.readiness[name].registry[value_name] = value
        self._log("registry", name, path=key, name=value_name, value=value, by=by)

    def create_vid_key(self, name: str, key: str, *, by: str) -> bool:
        """New-Item of the VID parameters key: False when it exists already."""
        state = self.readiness[name]
        if state.vid_key:
            return False
        state.vid_key = True
        self._log("registry", name, path=key, created=True, by=by)
        return True

    def start_network_atc(self, name: str, *, by: str) -> None:
        state = self.readiness[name]
        if state.network_atc_service != "Running":
            state.network_atc_service = "Running"
            self._log("service", name, name="NetworkATC", status="Running", by=by)

    # --- the post-OS steps: irreversible, each one logged with who asked ------------------------------------------
    def functional_level_blockers(self) -> list[str]:
        """Why Update-ClusterFunctionalLevel would fail now: every node must be Up and on the new OS."""
        return [f"node {n.name} is {n.state.name}" for n in self.nodes.values() if n.state != NodeState.Up] + \
            [f"node {n.name} runs {n.build}" for n in self.nodes.values() if n.number != self.target_number]

    def raise_functional_level(self, *, by: str) -> None:
        blockers = self.functional_level_blockers()
        if blockers:
            raise Refused("The cluster functional level cannot be updated: " + "; ".join(blockers) + ".",
                          ERROR_CLUSTER_UPGRADE_INCOMPLETE, None, "update-functional-level")
        if self.functional_level < TARGET_FUNCTIONAL_LEVEL:
            old, self.functional_level = self.functional_level, TARGET_FUNCTIONAL_LEVEL
            self._log("functional_level", None, by=by, old=old, new=self.functional_level)

    def update_pool(self, *, by: str) -> None:
        if self.strikes(next(iter(self.nodes)), FaultKind.pool_update_refused) is not None:
            raise Refused("The storage pool could not be upgraded: the pool is not healthy or a node is not up "
                          "to date.", 1, None, "update-pool")
        if self.pool_version < self.knobs.pool_version_after:
            old, self.pool_version = self.pool_version, self.knobs.pool_version_after
            self._log("pool_version", None, by=by, old=old, new=self.pool_version)

    def stop_vm(self, name: str, *, by: str) -> Vm:
        vm = self.vms[name]
        if vm.running:
            if self.strikes(vm.owner, FaultKind.vm_shutdown_fails) is not None:
                self._log("vm", vm.owner, vm=vm.name, status="ShutdownFailed", by=by)
                raise Refused(f"'{vm.name}' failed to shut down. The guest did not respond to the shutdown "
                              "request in time.", 0x8007045B, vm.owner, "stop-vm")
            vm.running, vm.state = False, "Offline"
            self._log("vm", vm.owner, vm=vm.name, status="Off", by=by)
        return vm

    def start_vm(self, name: str, *, by: str) -> Vm:
        vm = self.vms[name]
        if not vm.running and (not self.cluster_running or not all(self.csv_online.values())):
            raise Refused(f"'{vm.name}' failed to start: its storage is not available (the cluster or its volumes "
                          "are offline).", 0x80070015, vm.owner, "start-vm")
        if not vm.running:
            vm.running, vm.state = True, "Online"
            self._log("vm", vm.owner, vm=vm.name, status="Running", by=by)
        return vm

    # --- WorkloadPolicy shut-down: Stop-/Start-NodeWorkloads.ps1 (the list lives in the node's registry) ----------
    def stop_workloads(self, name: str, *, by: str) -> list[str]:
        """The node's running VMs listed (before any stops, as the script writes the list first), then shut down."""
        node = self.node(name)
        running = [vm.name for vm in self.vms.values() if vm.owner == node.name and vm.running]
        node.workloads_held = sorted(set(node.workloads_held) | set(running))
        for vm in running:
            self.stop_vm(vm, by=by)
        return list(node.workloads_held)

    def start_workloads(self, name: str, *, by: str) -> tuple[list[str], list[str]]:
        """Start-ClusterGroup on each listed VM, wherever it is now: (started, 'vm (why)' for those that did not);
        the list keeps the latter."""
        node = self.node(name)
        started, left = [], []
        for vm in node.workloads_held:
            try:
                self.start_vm(vm, by=by)
                started.append(vm)
            except Refused as refused:
                left.append((vm, refused.args[0]))
        node.workloads_held = [vm for vm, _ in left]
        return started, [f"{vm} ({why})" for vm, why in left]

    def remove_cloud_management(self, *, by: str) -> bool:
        """Remove-ClusterGroup 'Cloud Management' -RemoveResources: True if it was there."""
        if not self.cloud_management:
            return False
        self.cloud_management = False
        self._log("cluster_group_removed", None, group="Cloud Management", by=by)
        return True

    def update_vm_version(self, name: str, *, by: str) -> Vm:
        vm = self.vms[name]
        if vm.running:
            raise Refused(f"Cannot upgrade the configuration version of '{vm.name}' because it is not in a valid "
                          "state: the virtual machine must be turned off.", 0x80070005, vm.owner, "update-vm")
        if any(n.number != self.target_number for n in self.nodes.values()):
            raise Refused(f"Cannot upgrade the configuration version of '{vm.name}': every host must run the "
                          "new operating system.", 5977, vm.owner, "update-vm")
        target = self.default_vm_version(vm.owner)
        if vm.version != target:
            old, vm.version = vm.version, target
            self._log("vm_version", vm.owner, vm=vm.name, old=old, new=vm.version, by=by)
        return vm

    def default_vm_version(self, name: str) -> str:
        """What a host creates VMs with, and what Update-VMVersion moves a VM to on it: its OS's default."""
        return TARGET_VM_VERSION if self.node(name).number == self.target_number else SOURCE_VM_VERSION

    def run_node_script(self, name: str, path: str, phase: str, *, by: str) -> None:
        """A Pre/PostUpdateScript on the node: it succeeds unless a *_script_fails fault strikes."""
        node = self.node(name)
        kind = FaultKind.pre_script_fails if phase == "Pre" else FaultKind.post_script_fails
        failed = self.strikes(node.name, kind) is not None
        held = node.files.get(path.lower())  # hci-upgrade's CAU workload scripts do what their text says
        if not failed and held == "CauPreUpdate-StopWorkloads.ps1":
            self.stop_workloads(node.name, by=by)
        elif not failed and held == "CauPostUpdate-StartWorkloads.ps1":
            left = self.start_workloads(node.name, by=by)[1]
            if left:
                self._log("script", node.name, by=by, path=path, status="Failed")
                raise Refused(f"{node.name}: these VMs did not start: {'; '.join(left)}", 1, node.name, "script")
        self._log("script", node.name, by=by, path=path, status="Failed" if failed else "Completed")
        if failed:
            raise Refused(f"The script '{path}' failed on {node.name}: exit code 1.", 1, node.name, "script")

    # --- storage ----------------------------------------------------------------------------------------------
    def _drives_leave(self, node: Node) -> None:
        node.away_since = self.now()
        self._log("drives", node.name, status="away")
        self._refresh_storage_health()

    def _drives_return(self, node: Node) -> None:
        if node.away_since is None:
            return
        away = self.now() - node.away_since
        node.away_since = None
        dirty = int(away * self.durations.write_mb_per_s * MB)
        self._log("drives", node.name, status="back", away_s=round(away, 1), dirty_bytes=dirty)
        fault = self.scenario.faults_for(node.name, FaultKind.repair_stalls)
        if dirty > 0:
            share = dirty // len(self.disks)
            for disk in self.disks.values():  # no more to resync than the volume holds
                job = StorageJob(name="Repair", disk=disk.name, bytes_total=max(min(share, disk.size), 1),
                                 started=self.now(),
                                 stall_at=fault.at_percent / 100 if fault else None)
                self.jobs.append(job)
                self._log("storage_job", node.name, disk=disk.name, status="Running", bytes_total=job.bytes_total)
        self._refresh_storage_health()

    def _progress_jobs(self, now: float) -> None:
        changed = False
        rate = self.durations.repair_mb_per_s * MB / max(1, len(self.disks))
        for job in list(self.jobs):
            if job.state == JobState.Running:
                done = (now - job.started) * rate
                limit = job.bytes_total * job.stall_at if job.stall_at is not None else job.bytes_total
                job.bytes_processed = min(done, limit, job.bytes_total)
                if job.bytes_processed >= job.bytes_total:
                    job.state, job.ended = JobState.Completed, now
                    self._log("storage_job", None, disk=job.disk, status="Completed")
                    changed = True
            elif job.ended is not None and now - job.ended > self.durations.completed_job_linger_s:
                self.jobs.remove(job)
        if changed:
            self._refresh_storage_health()

    def _refresh_storage_health(self) -> None:
        away = [n for n in self.nodes.values() if n.away_since is not None]
        for disk in self.disks.values():
            repairing = any(j.disk == disk.name and j.state == JobState.Running for j in self.jobs)
            if not self.cluster_running or not self.csv_online[disk.name]:
                # the pool is a clustered resource, offline with the cluster; a volume whose cluster resource is
                # offline is detached from its nodes and its health is unknown until it is online again
                new = (HealthStatus.Unknown, (OperationalStatus.Detached,))
            elif away:
                new = (HealthStatus.Warning, (OperationalStatus.Degraded,))
            elif repairing:
                new = (HealthStatus.Warning, (OperationalStatus.InService,))
            else:
                new = (HealthStatus.Healthy, (OperationalStatus.OK,))
            if (disk.health, disk.operational) != new:
                disk.health, disk.operational = new
                self._log("disk_health", None, disk=disk.name, health=new[0].name,
                          operational=[s.name for s in new[1]])

    @property
    def pool_health(self) -> HealthStatus:
        return max((d.health for d in self.disks.values()), default=HealthStatus.Healthy)

    def running_jobs(self) -> list[StorageJob]:
        return [j for j in self.jobs if j.state == JobState.Running]
