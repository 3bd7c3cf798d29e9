"""Typed operations on a cluster, built on the remote layer: read nodes, storage and groups; pause, drain, resume;
start the feature update; restart. Each method is one documented cmdlet call (reference/domain.md §3) and returns
plain typed data. Waiting and policy live elsewhere (steps.py, flows/)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import SecretStr

from hciupgrade.models import ClusterInventory
from hciupgrade.ownership import FENCE_KEY, FENCED_OUT, Held, LostOwnership, Owner
from hciupgrade.psenums import DrainStatus, HealthStatus, JobState, NodeState, ScheduledTaskState, parse
from hciupgrade.remote import (
    SWITCH,
    Call,
    Cmdlet,
    CmdletFailed,
    ErrorInfo,
    NodeSession,
    NodeUnreachable,
    PackagedScript,
    Pipeline,
    RemoteError,
    Result,
    Session,
)

FEATURE_UPDATE_TASK = "HciUpgrade-FeatureUpdate"
CUMULATIVE_UPDATE_TASK = "HciUpgrade-CumulativeUpdate"
CURRENT_VERSION_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"
# Our mark on a node we paused (Suspend-NodeForUpgrade.ps1 writes it, Resume-NodeAfterUpgrade.ps1 removes it)
MARKER_KEY = r"HKLM:\SOFTWARE\hci-upgrade"
CURRENT_VERSION_LEAF, MARKER_LEAF = "currentversion", "hci-upgrade"  # each key's PSChildName, lower case
SCHED_S_TASK_RUNNING = 0x41301
SCHED_S_TASK_HAS_NOT_RUN = 0x41303  # what a task just started may still read before the scheduler launches it
# What a failover-cluster cmdlet answers on a node whose cluster service is down or starting: ask another node
CLUSTER_SERVICE_DOWN = ("ClusterEndpointNotRegistered", "ClusterRpcConnection")
TASK_NOT_FOUND = "CmdletizationQuery_NotFound_TaskName"
PATH_NOT_FOUND = "PathNotFound"
STOP = {"ErrorAction": "Stop"}  # where the code relies on a failure being terminating
MAX_PARALLEL = 16  # nodes read at once (a cluster has at most 16)
T = TypeVar("T")
HEALTH = PackagedScript("Get-ClusterHealth.ps1")  # nodes, virtual disks, storage jobs, pool: one round trip
OWNED_COMMAND = "Invoke-OwnedCommand.ps1"  # one cmdlet that changes something, after the ownership proof


@dataclass(frozen=True)
class UpdateKind:
    """How an update is installed on a node: a packaged script registers a SYSTEM scheduled task that runs the
    installer with no restart; the task's LastTaskResult is the installer's exit code."""

    name: str
    task: str
    script: str
    path_parameter: str
    success: frozenset[int]


FEATURE = UpdateKind("feature", FEATURE_UPDATE_TASK, "Register-FeatureUpdateTask.ps1", "SetupPath", frozenset({0}))
# wusa.exe: 0 installed, 3010 installed and a restart is needed, 0x240006 already installed
CUMULATIVE = UpdateKind("cumulative", CUMULATIVE_UPDATE_TASK, "Register-CumulativeUpdateTask.ps1", "PackagePath",
                        frozenset({0, 3010, 0x240006}))
UPDATES = {kind.name: kind for kind in (FEATURE, CUMULATIVE)}
# Wait-UpdateTask.ps1: how long one call waits on the node, and how often the node reads its task meanwhile
WAIT_CALL_SECONDS = 600
WAIT_EVERY_SECONDS = 10


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: NodeState
    drain_status: DrainStatus
    build_number: int
    status_information: str

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> NodeInfo:
        return cls(obj["Name"], parse(NodeState, obj["State"]), parse(DrainStatus, obj["DrainStatus"]),
                   int(obj.get("BuildNumber") or 0), str(obj.get("StatusInformation", "")))


@dataclass(frozen=True)
class NodeReading:
    """ClusterClient.position: a node's build, our mark, the cluster's view and its update task, in one read."""
    build: str
    mark: dict[str, Any] | None
    info: NodeInfo | None
    task: tuple[ScheduledTaskState, int] | None


@dataclass(frozen=True)
class Prerequisites:
    """ClusterClient.prerequisites: the preflight's reads of one node (Get-UpgradePrerequisites.ps1)."""
    build: str
    firewall_rules_enabled: tuple[str, ...]  # the Remote Shutdown group's rules, each rule's Enabled
    restart_flagged: tuple[bool, ...]  # the servicing stack's and Windows Update's restart flags
    pending_file_renames: bool
    no_auto_update: str | None  # the AU policy's values; None when there is no policy key
    au_options: str | None
    aks_hci: bool
    registry_values: tuple[Any, ...]  # each asked value, None when missing
    media_version: str | None
    media_error: str | None
    package_hash: str | None
    package_error: str | None
    adapters: tuple[tuple[str, str, str], ...]  # (name, driver provider, driver version) of each physical NIC
    task: tuple[ScheduledTaskState, int] | None = None  # the asked update's task: state and exit code


@dataclass(frozen=True)
class DiskInfo:
    name: str
    health: HealthStatus
    operational: tuple[str, ...]


@dataclass(frozen=True)
class JobInfo:
    name: str
    state: JobState
    percent: int
    bytes_processed: int
    bytes_total: int


@dataclass(frozen=True)
class PoolInfo:
    name: str
    health: HealthStatus


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: tuple[NodeInfo, ...]
    disks: tuple[DiskInfo, ...]
    jobs: tuple[JobInfo, ...]
    pool: PoolInfo | None

    def node(self, name: str) -> NodeInfo:
        return next(n for n in self.nodes if n.name.lower() == name.lower())


def first(result: Result, node: str, call: Call | str) -> Any:
    """The call's first object; a call that wrote none fails with the errors it wrote (never an IndexError)."""
    if result.objects:
        return result.objects[0]
    errors = result.errors or [ErrorInfo("the call returned no object", "NoObjectReturned", terminating=True)]
    raise CmdletFailed(node, str(call), errors)


def only_not_found(result: Result, node: str, call: Call, error_id: str) -> bool:
    """True when the call found nothing and said so with `error_id` (a non-terminating error); other errors
    fail the call."""
    if result.objects:
        return False
    others = [e for e in result.errors if e.error_id != error_id]
    if others:
        raise CmdletFailed(node, str(call), others)
    return True


def _build(current_version: dict[str, Any]) -> str:
    """10.0.<CurrentBuildNumber>.<UBR> from the CurrentVersion key's values (reference/domain.md §4.2)."""
    return f"10.0.{current_version['CurrentBuildNumber']}.{current_version['UBR']}"


def _job(obj: dict[str, Any]) -> JobInfo:
    return JobInfo(obj["Name"], parse(JobState, obj["JobState"]), int(obj.get("PercentComplete") or 0),
                   int(obj.get("BytesProcessed") or 0), int(obj.get("BytesTotal") or 0))


def _operational(value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        try:
            from hciupgrade.psenums import OperationalStatus

            out.append(parse(OperationalStatus, v).name)
        except ValueError:
            out.append(str(v))  # Microsoft's own values are compared by name
    return tuple(out)


def _snapshot(result: Result) -> ClusterSnapshot:
    """Get-ClusterHealth.ps1's output (Wait-StorageRepair.ps1's too), its objects told apart by their type names."""
    disks = [DiskInfo(o["FriendlyName"], parse(HealthStatus, o["HealthStatus"]), _operational(o["OperationalStatus"]))
             for o in result.of_type("MSFT_VirtualDisk")]
    pools = result.of_type("MSFT_StoragePool")
    pool = PoolInfo(pools[0]["FriendlyName"], parse(HealthStatus, pools[0]["HealthStatus"])) if pools else None
    return ClusterSnapshot(tuple(NodeInfo.parse(o) for o in result.of_type("ClusterNode")), tuple(disks),
                           tuple(_job(o) for o in result.of_type("MSFT_StorageJob")), pool)


def _task(result: Result) -> tuple[ScheduledTaskState, int] | None:
    """A task's state and exit code among a script's objects (Get-ScheduledTask's and Get-ScheduledTaskInfo's)."""
    tasks, infos = result.of_type("MSFT_ScheduledTask"), result.of_type("MSFT_TaskDynamicInfo")
    return (parse(ScheduledTaskState, tasks[0]["State"]), int(infos[0]["LastTaskResult"]) & 0xFFFFFFFF) \
        if tasks and infos else None


class ClusterClient:
    """One cluster's nodes, reached through one NodeSession each."""

    def __init__(self, inventory: ClusterInventory, password: SecretStr,
                 sessions: dict[str, Session] | None = None) -> None:
        """`sessions` replaces the pypsrp sessions (the simulator's in-process ones, for property tests)."""
        self.name = inventory.name
        self.inventory = inventory
        self.owner: Owner | None = None  # set while a run owns the cluster: every change carries its proof
        self.sessions: dict[str, Session] = sessions or {
            n.name: NodeSession(n, inventory.transport, inventory.credential.username, password)
            for n in inventory.nodes}

    def close(self) -> None:
        self.each(lambda node: self.sessions[node].close())  # each closes its shell on its node, at once

    def session(self, node: str) -> NodeSession:
        return self.sessions[self.inventory.node(node).name]

    def each(self, fn: Callable[[str], T], nodes: Iterable[str] | None = None) -> dict[str, T | RemoteError]:
        """`fn(node)` for every node (all of the cluster's by default) at once, a thread a node: each node answers
        over its own session, so N nodes take about as long as the slowest instead of the sum. A node whose
        call failed maps to its RemoteError; any other exception is raised. The order is the nodes' order."""
        names = list(self.sessions if nodes is None else nodes)

        def one(name: str) -> T | RemoteError:
            try:
                return fn(name)
            except RemoteError as e:
                return e

        if len(names) <= 1:
            return {name: one(name) for name in names}
        with ThreadPoolExecutor(max_workers=min(len(names), MAX_PARALLEL), thread_name_prefix="hci-node") as pool:
            return dict(zip(names, pool.map(one, names), strict=True))

    def call_seconds(self) -> list[float]:
        return [s for session in self.sessions.values() for s in session.call_seconds]

    def query(self, call: Cmdlet | Pipeline, exclude: str | None = None) -> list[Any]:
        """Run a cluster-wide query on the first reachable node, preferring nodes other than `exclude`."""
        return self.ask(call, exclude).objects

    def ask(self, call: Call, exclude: str | None = None, *, timeout: float | None = None) -> Result:
        """`query`, with the whole result (objects with their type names, non-terminating errors)."""
        names = [n for n in self.sessions if n != exclude] + ([exclude] if exclude in self.sessions else [])
        last: RemoteError | None = None
        for name in names:
            try:
                return self.sessions[name].run(call, timeout=timeout)
            except NodeUnreachable as e:
                last = e
            except CmdletFailed as e:  # a node still joining cannot answer for the cluster; ask the next one
                if not e.has_error_id(*CLUSTER_SERVICE_DOWN):
                    raise
                last = e
        raise NodeUnreachable(self.name, f"no node of the cluster answered ({last})")

    # --- changes carry their owner's proof (hciupgrade/ownership.py) -------------------------------------------
    def _owned(self, filename: str, parameters: dict[str, Any], *, marked: bool = False) -> PackagedScript:
        """An owned script's call: the lease checked now, the run id and fence bound for the node to check."""
        if self.owner is None:
            raise LostOwnership(f"{self.name}: no run owns the cluster here; a change needs the cluster's lock")
        self.owner.check()
        return PackagedScript(filename, {**parameters, **self.owner.parameters(marked=marked)})

    def act(self, node: str, filename: str, parameters: dict[str, Any], *, marked: bool = False,
            timeout: float | None = None) -> Result:
        """Run an owned script on `node`; a node holding a newer run's fence refuses it (LostOwnership)."""
        call = self._owned(filename, parameters, marked=marked)
        try:
            return self.session(node).run(call, timeout=timeout)
        except CmdletFailed as e:
            if e.has_error_id(FENCED_OUT):
                raise LostOwnership(f"{node}: {e.errors[0].message}") from None
            raise

    def act_on_cluster(self, command: str, parameters: dict[str, Any], exclude: str | None = None) -> Result:
        """An owned cmdlet that changes the cluster, run on the first node that answers for it."""
        return self.act_anywhere(OWNED_COMMAND, {"Command": command, **parameters}, exclude)

    def act_anywhere(self, filename: str, parameters: dict[str, Any], exclude: str | None = None) -> Result:
        """An owned script that changes the cluster, run on the first node that answers for it."""
        try:
            return self.ask(self._owned(filename, parameters), exclude)
        except CmdletFailed as e:
            if e.has_error_id(FENCED_OUT):
                raise LostOwnership(f"{self.name}: {e.errors[0].message}") from None
            raise

    def node_fence(self, node: str) -> int:
        """The newest fence the node was shown by a run of ours (0 when none)."""
        from hciupgrade.ownership import fence_of

        call = Cmdlet("Get-ItemProperty", {"Path": FENCE_KEY})
        result = self.session(node).run(call)
        if only_not_found(result, node, call, PATH_NOT_FOUND):
            return 0
        return fence_of(result.objects[0])

    def own(self, run_id: str, next_fence: Callable[[int], int], held: Held | None = None, *,
            take_over: dict[str, str] | None = None) -> dict[str, dict[str, Any] | None | RemoteError]:
        """Take the cluster for a run that holds its lock: a fence newer than any the nodes hold (`next_fence`
        gives one at least as high as its argument, and higher than any it gave before), shown to every node that
        answers, each node in `take_over` taken from the dead run named. From here on every change carries the
        proof. Returns each node's mark as it is now (a RemoteError for a node that did not answer)."""
        held = held or Held()
        if held.fence is None:
            seen = self.each(self.node_fence)
            held.fence = next_fence(max((v for v in seen.values() if isinstance(v, int)), default=0) + 1)
        self.owner = Owner(run_id, held.fence, held.check)
        take_over = take_over or {}
        return self.each(lambda node: self.claim(node, take_over.get(node)))

    def claim(self, node: str, take_over: str | None = None) -> dict[str, Any] | None:
        """Show the node this run's fence (Set-UpgradeOwner.ps1); with `take_over`, a dead run's mark becomes
        ours. Returns the node's mark as it is now."""
        result = self.act(node, "Set-UpgradeOwner.ps1", {"TakeOver": take_over} if take_over else {})
        keys = {str(o.get("PSChildName")).lower(): o for o in result.objects if isinstance(o, dict)}
        return keys.get(MARKER_LEAF)

    # --- reads ---------------------------------------------------------------------------------------------
    def nodes(self, exclude: str | None = None) -> list[NodeInfo]:
        return [NodeInfo.parse(o) for o in self.query(Cmdlet("Get-ClusterNode"), exclude)]

    def snapshot(self, exclude: str | None = None, *, on: str | None = None) -> ClusterSnapshot:
        """Nodes, virtual disks, storage jobs and the pool, read in one call (Get-ClusterHealth.ps1). `on`: asked
        of that node itself, so the answer also shows it answers on WinRM (NodeUnreachable when it does not); when
        its cluster service is not running, another node answers for the cluster."""
        if on is None:
            result = self.ask(HEALTH, exclude)
        else:
            try:
                result = self.session(on).run(HEALTH)
            except CmdletFailed as e:
                if not e.has_error_id(*CLUSTER_SERVICE_DOWN):
                    raise
                result = self.ask(HEALTH, exclude=on)
        return _snapshot(result)

    def await_storage(self, seconds: float, *, settled: bool) -> ClusterSnapshot:
        """The storage jobs once none is active, or as they are after `seconds` (cluster seconds) of waiting on a
        node (Wait-StorageRepair.ps1): one call where polling would make one every few seconds. `settled`: the
        cluster's whole health, once every virtual disk and the pool are Healthy besides."""
        params: dict[str, Any] = {"Seconds": max(1, int(seconds)), "EverySeconds": WAIT_EVERY_SECONDS}
        if settled:
            params["Settled"] = SWITCH
        return _snapshot(self.ask(PackagedScript("Wait-StorageRepair.ps1", params),
                                  timeout=seconds / self.inventory.time_factor + 120))

    def storage_jobs(self, exclude: str | None = None) -> list[JobInfo]:
        return [_job(o) for o in self.query(Cmdlet("Get-StorageJob"), exclude)]

    def roles_per_node(self, groups: list[dict[str, Any]] | None = None) -> dict[str, int]:
        """Each node's VM roles, from Get-ClusterGroup (read now, or the `groups` read a moment ago)."""
        counts = {name: 0 for name in self.sessions}
        for group in self.query(Cmdlet("Get-ClusterGroup")) if groups is None else groups:
            if str(group.get("GroupType")) == "VirtualMachine" and group.get("OwnerNode") in counts:
                counts[group["OwnerNode"]] += 1
        return counts

    def groups_on(self, node: str) -> list[tuple[str, str]]:
        """The VM roles a node still owns, with their state (what a failed drain left behind)."""
        groups = self.query(Cmdlet("Get-ClusterNode", {"Name": node}) | Cmdlet("Get-ClusterGroup"))  # its own only
        return [(str(g["Name"]), str(g.get("State"))) for g in groups
                if str(g.get("GroupType")) == "VirtualMachine" and g.get("OwnerNode") == node]

    def os_build(self, node: str, *, timeout: float | None = None) -> str:
        """10.0.<CurrentBuildNumber>.<UBR> from the node's registry (reference/domain.md §4.2)."""
        call = Cmdlet("Get-ItemProperty", {"Path": CURRENT_VERSION_KEY, **STOP})
        return _build(first(self.session(node).run(call, timeout=timeout), node, call))

    def reachable(self, node: str) -> bool:
        """Whether the node answers on WinRM (a registry read: it needs no cluster service)."""
        try:
            self.session(node).run(Cmdlet("Get-ItemProperty", {"Path": CURRENT_VERSION_KEY}), timeout=30)
            return True
        except NodeUnreachable:
            return False

    def pause_mark(self, node: str) -> dict[str, Any] | None:
        """Our mark on the node (PausedByRun, PausedBy, PausedAt), or None: the evidence that a pause is ours."""
        call = Cmdlet("Get-ItemProperty", {"Path": MARKER_KEY})
        result = self.session(node).run(call)
        if only_not_found(result, node, call, PATH_NOT_FOUND):
            return None
        return result.objects[0]

    def build_and_mark(self, node: str, *, timeout: float | None = None) -> tuple[str, dict[str, Any] | None]:
        """`os_build` and `pause_mark` in one call: Get-ItemProperty with both keys (-Path takes several); each
        object is told by its PSChildName, and a missing mark is its PathNotFound error."""
        call = Cmdlet("Get-ItemProperty", {"Path": (CURRENT_VERSION_KEY, MARKER_KEY)})
        result = self.session(node).run(call, timeout=timeout)
        keys = {str(o.get("PSChildName")).lower(): o for o in result.objects if isinstance(o, dict)}
        version = keys.get(CURRENT_VERSION_LEAF)
        if version is None or any(e.error_id != PATH_NOT_FOUND for e in result.errors):
            raise CmdletFailed(node, str(call), result.errors or [
                ErrorInfo("the call returned no CurrentVersion key", "NoObjectReturned", terminating=True)])
        return _build(version), keys.get(MARKER_LEAF)

    def position(self, node: str, kind: UpdateKind | None = None) -> NodeReading:
        """What decides the node's next step, read on the node in one call (Get-NodePosition.ps1): its build, our
        mark, the cluster's view of it (None when its cluster service does not answer yet) and, with `kind`, the
        update's task state and exit code (None when the task was never registered)."""
        params: dict[str, Any] = {"Name": node} | ({"TaskName": kind.task} if kind else {})
        call = PackagedScript("Get-NodePosition.ps1", params)
        result = self.session(node).run(call)
        keys = {str(o.get("PSChildName")).lower(): o for o in result.objects if isinstance(o, dict)}
        version = keys.get(CURRENT_VERSION_LEAF)
        if version is None:
            raise CmdletFailed(node, str(call), result.errors or [
                ErrorInfo("the call returned no CurrentVersion key", "NoObjectReturned", terminating=True)])
        nodes = [NodeInfo.parse(o) for o in result.of_type("ClusterNode")]
        return NodeReading(_build(version), keys.get(MARKER_LEAF), nodes[0] if nodes else None, _task(result))

    def prerequisites(self, node: str, *, setup_path: str | None = None, package_path: str | None = None,
                      registry: Iterable[tuple[str, str]] = (), adapters: bool = False,
                      kind: UpdateKind | None = None) -> Prerequisites:
        """The preflight's reads of the node in one call (Get-UpgradePrerequisites.ps1): its build, the update's
        prerequisites, AKS on HCI, the `registry` values (key, name), the media's build under `setup_path`, the
        package's SHA-256 at `package_path`, with `adapters` the physical NICs' drivers, and with `kind` its update
        task's state and exit code."""
        pairs = list(registry)
        params: dict[str, Any] = {"RegistryPath": [k for k, _ in pairs], "RegistryName": [n for _, n in pairs]} \
            if pairs else {}
        params |= {"SetupPath": setup_path} if setup_path else {}
        params |= {"PackagePath": package_path} if package_path else {}
        params |= {"Adapters": SWITCH} if adapters else {}
        params |= {"TaskName": kind.task} if kind else {}
        call = PackagedScript("Get-UpgradePrerequisites.ps1", params)
        result = self.session(node).run(call)
        found = result.of_type("Prerequisites")
        version = next((o for o in result.objects if isinstance(o, dict)
                        and str(o.get("PSChildName")).lower() == CURRENT_VERSION_LEAF), None)
        if version is None or not found:
            raise CmdletFailed(node, str(call), result.errors or [
                ErrorInfo("the call returned no CurrentVersion key or no prerequisites", "NoObjectReturned",
                          terminating=True)])
        o = found[0]

        def items(name: str) -> tuple[Any, ...]:
            value = o.get(name)
            return () if value is None else tuple(value) if isinstance(value, list | tuple) else (value,)

        def text(name: str) -> str | None:
            return None if o.get(name) is None else str(o[name])

        return Prerequisites(
            _build(version), tuple(str(v) for v in items("FirewallRulesEnabled")),
            tuple(bool(v) for v in items("RestartFlagged")), bool(o.get("PendingFileRenames")),
            text("NoAutoUpdate"), text("AUOptions"), bool(o.get("AksHci")),
            (items("RegistryValues") + (None,) * len(pairs))[:len(pairs)], text("MediaVersion"), text("MediaError"),
            text("PackageHash"), text("PackageError"),
            tuple(zip(*(tuple(str(v) for v in items(f"Adapter{p}")) for p in ("Names", "DriverProviders",
                                                                                "DriverVersions")), strict=False)),
            _task(result))

    # --- changes ---------------------------------------------------------------------------------------------
    def cau_run_state(self) -> str:
        """Get-CauRun's RunState: RunNotInProgress, RunInProgress or RunFailed. Found among what it writes (a
        RunState value and, during a run, the CauRun object), whatever their order."""
        from hciupgrade.psenums import CauRunState

        for obj in self.query(Cmdlet("Get-CauRun", {"ClusterName": self.name})):
            if isinstance(obj, dict):
                continue
            try:
                return parse(CauRunState, obj).name
            except ValueError:
                continue
        return "RunNotInProgress"

    def quorum_witness(self) -> str | None:
        objects = self.query(Cmdlet("Get-ClusterQuorum"))
        return objects[0].get("QuorumResource") if objects else None

    def media_build(self, node: str, setup_path: str) -> str:
        """The build the feature update on this node would install: the media's install.wim, image 1."""
        image = setup_path.rstrip("\\") + "\\sources\\install.wim"
        call = Cmdlet("Get-WindowsImage", {"ImagePath": image, "Index": 1, **STOP})
        return str(first(self.session(node).run(call), node, call)["Version"])

    def run_node_script(self, node: str, path: str, phase: str) -> None:
        self.act(node, "Invoke-NodeScript.ps1", {"Path": path, "Phase": phase})

    def pause_for_upgrade(self, node: str, *, force_drain: bool = False) -> NodeInfo:
        """Mark the node as ours, then Suspend-ClusterNode -Drain, in one packaged script that refuses a node that
        is not Up (unless the mark is this run's): an operator's pause is never taken over."""
        params: dict[str, Any] = {"Name": node}
        if force_drain:
            params["ForceDrain"] = SWITCH
        result = self.act(node, "Suspend-NodeForUpgrade.ps1", params)
        return NodeInfo.parse(first(result, node, "Suspend-NodeForUpgrade.ps1"))

    def node_info(self, node: str) -> NodeInfo:
        """The cluster's view of `node`, asked of another node first."""
        return NodeInfo.parse(self.query(Cmdlet("Get-ClusterNode", {"Name": node}), exclude=node)[0])

    def await_node_state(self, node: str, states: Iterable[NodeState], seconds: float) -> NodeInfo:
        """The cluster's view of `node` once it is in one of `states`, or as it is after `seconds` (cluster
        seconds) of waiting on another node (Wait-ClusterNodeState.ps1): one call where polling would make one a
        minute."""
        call = PackagedScript("Wait-ClusterNodeState.ps1", {
            "Name": node, "State": [s.name for s in states], "Seconds": max(1, int(seconds)),
            "EverySeconds": WAIT_EVERY_SECONDS})
        names = [n for n in self.sessions if n != node]
        timeout = seconds / self.inventory.time_factor + 120
        last: RemoteError | None = None
        for name in names:  # another node answers for the cluster; one restarting is skipped
            try:
                return NodeInfo.parse(first(self.sessions[name].run(call, timeout=timeout), name, call))
            except NodeUnreachable as e:
                last = e
        raise last or NodeUnreachable(node, "no other node of the cluster answered")

    def resume_after_upgrade(self, node: str, failback: str) -> NodeInfo:
        """Resume-ClusterNode if the node carries this run's mark, then remove the mark; refused otherwise."""
        result = self.act(node, "Resume-NodeAfterUpgrade.ps1", {"Name": node, "Failback": failback})
        return NodeInfo.parse(first(result, node, "Resume-NodeAfterUpgrade.ps1"))

    def register_update(self, node: str, kind: UpdateKind, path: str, *, start: bool = False,
                        marked: bool = True) -> None:
        """Register the update's task (a running one is left alone); with `start`, start it in the same call.
        `marked`: the node must carry this run's mark (a rolling upgrade's node; not the offline path's)."""
        params: dict[str, Any] = {kind.path_parameter: path, "TaskName": kind.task}
        if start:
            params["Start"] = SWITCH
        self.act(node, kind.script, params, marked=marked)

    def stop_update(self, node: str, kind: UpdateKind, *, marked: bool = True) -> None:
        self.act(node, OWNED_COMMAND, {"Command": "Stop-ScheduledTask", "TaskName": kind.task}, marked=marked)

    def update_result(self, node: str, kind: UpdateKind) -> int:
        """The installer's exit code so far: LastTaskResult (0x41301 while the task runs)."""
        call = Cmdlet("Get-ScheduledTaskInfo", {"TaskName": kind.task, **STOP})
        return int(first(self.session(node).run(call), node, call)["LastTaskResult"]) & 0xFFFFFFFF

    def await_update_result(self, node: str, kind: UpdateKind, seconds: float) -> int:
        """The installer's exit code once it ends, or 0x41301 after `seconds` (cluster seconds) of waiting on the
        node itself (Wait-UpdateTask.ps1): one call where polling would make one a minute."""
        call = PackagedScript("Wait-UpdateTask.ps1", {"TaskName": kind.task, "Seconds": max(1, int(seconds)),
                                                      "EverySeconds": WAIT_EVERY_SECONDS})
        timeout = seconds / self.inventory.time_factor + 120  # the wait, and a slow answer's margin
        return int(first(self.session(node).run(call, timeout=timeout), node, call)["LastTaskResult"]) & 0xFFFFFFFF

    def update_status(self, node: str, kind: UpdateKind) -> tuple[ScheduledTaskState, int] | None:
        """The task's state and the installer's exit code (0x41301 while it runs); None when the task does not
        exist (Get-ScheduledTask writes a non-terminating ObjectNotFound and no object)."""
        call = Cmdlet("Get-ScheduledTask", {"TaskName": kind.task})
        result = self.session(node).run(call)
        if only_not_found(result, node, call, TASK_NOT_FOUND):
            return None
        return parse(ScheduledTaskState, result.objects[0]["State"]), self.update_result(node, kind)

    def restart(self, node: str, *, marked: bool = True) -> None:
        """Restart-Computer -Force, under this run's mark (`marked`) or its fence alone (the offline path). The
        connection may drop before the answer: that is the restart working."""
        try:
            self.act(node, OWNED_COMMAND, {"Command": "Restart-Computer", "Force": SWITCH}, marked=marked,
                     timeout=60)
        except NodeUnreachable:
            pass
        # the restart ends the node's shells; closing ours would only wait on a node on its way down
        self.session(node).reset(graceful=False)

    # --- the post-OS steps -----------------------------------------------------------------------------------
    def functional_level(self) -> int:
        return int(self.query(Cmdlet("Get-Cluster"))[0]["ClusterFunctionalLevel"])

    def functional_level_whatif(self) -> None:
        """Update-ClusterFunctionalLevel -WhatIf: fails (CmdletFailed) when the level could not be raised now."""
        self.query(Cmdlet("Update-ClusterFunctionalLevel", {"WhatIf": SWITCH, **STOP}))

    def raise_functional_level(self) -> int:
        """Irreversible: Update-ClusterFunctionalLevel -Force (no prompt a remote session could not answer)."""
        objects = self.act_on_cluster("Update-ClusterFunctionalLevel", {"Force": SWITCH}).objects
        return int(objects[0]["ClusterFunctionalLevel"]) if objects else self.functional_level()

    def pool(self) -> tuple[str, int]:
        """The S2D pool's FriendlyName and metadata version as a number (the checker wants 28 or more): read by
        Get-StoragePoolVersion.ps1 from the CIM property, as Get-StoragePool shows a friendly text."""
        call = PackagedScript("Get-StoragePoolVersion.ps1")
        obj = first(self.ask(call), self.name, call)
        return str(obj["FriendlyName"]), int(obj["Version"])

    def update_pool(self, name: str) -> None:
        """Irreversible: Update-StoragePool -Confirm:$false."""
        self.act_on_cluster("Update-StoragePool", {"FriendlyName": name})

    def default_vm_version(self) -> str | None:
        """The VM configuration version the hosts create VMs with (Get-VMHostSupportedVersion -Default, read on
        every node; the lowest when they differ): what Update-VMVersion moves a VM to. None when none answers."""
        found = self.each(lambda node: self.session(node).run(Cmdlet("Get-VMHostSupportedVersion",
                                                                     {"Default": SWITCH})).objects)
        versions = [str(o[0]["Version"]) for o in found.values() if isinstance(o, list) and o]
        return min(versions, key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit())) if versions else None

    def vms(self, node: str) -> list[dict[str, Any]]:
        """The VMs on a node (Get-VM there): Name, State, Version."""
        return self.session(node).run(Cmdlet("Get-VM")).objects

    def vm_call(self, node: str, cmdlet: str, vm: str, **extra: Any) -> None:
        """Stop-VM, Start-VM or Update-VMVersion of one VM on its node; a failure is terminating. Stop-VM always
        with -Force: without it, a guest whose console is locked is not shut down but prompts, and a remote
        session cannot answer (Msvm_ShutdownComponent.InitiateShutdown: 32781 "The machine is locked and cannot
        be shut down without the force option"); with it, the guest still gets its orderly shutdown."""
        if cmdlet not in ("Stop-VM", "Start-VM", "Update-VMVersion"):
            raise ValueError(cmdlet)
        if cmdlet == "Stop-VM":
            extra = {"Force": SWITCH, **extra}
        self.act(node, OWNED_COMMAND, {"Command": cmdlet, "Name": vm, **extra})

    def storage_replica(self) -> bool:
        """Whether Storage Replica groups exist (Get-SRGroup), asked of every node: it lists the groups of the
        server it runs on only, so a stretched cluster's other site would be missed. A node without the feature
        has none."""
        def groups(node: str) -> bool:
            try:
                return bool(self.session(node).run(Cmdlet("Get-SRGroup")).objects)
            except CmdletFailed as e:
                if e.has_error_id("CommandNotFoundException"):
                    return False
                raise

        found = self.each(groups)
        errors = [e for e in found.values() if isinstance(e, RemoteError)]
        if errors and len(errors) == len(found):
            raise errors[0]
        return any(v is True for v in found.values())

    def validate(self) -> list[dict[str, Any]]:
        """Test-Cluster's per-test results (packaged Invoke-ClusterValidation.ps1): Category, Test, Result. Run
        once, on the first node that answers a read: a validation cut off by a timeout may still run on its node,
        so it is never started again on another."""
        for name in self.sessions:
            if self.reachable(name):
                return self.sessions[name].run(PackagedScript("Invoke-ClusterValidation.ps1"), timeout=1800).objects
        raise NodeUnreachable(self.name, "no node of the cluster answered for Test-Cluster")

    def registry_value(self, node: str, key: str, name: str) -> Any:
        """A registry value on the node, or None when the key or the value does not exist."""
        result = self.session(node).run(Cmdlet("Get-ItemProperty", {"Path": key, "Name": name}))
        return result.objects[0].get(name) if result.objects else None

    # --- the whole cluster at once: the offline path -----------------------------------------------------------
    def csvs(self) -> list[dict[str, Any]]:
        """The cluster shared volumes: Name ("Cluster Virtual Disk (Volume01)") and State."""
        return self.query(Cmdlet("Get-ClusterSharedVolume"))

    def set_csv(self, name: str, online: bool) -> None:
        self.act_on_cluster("Start-ClusterResource" if online else "Stop-ClusterResource", {"Name": name})

    def stop_cluster(self) -> None:
        """Stop-Cluster -Force: the cluster service stops on every node; roles, CSVs and the pool go offline."""
        self.act_on_cluster("Stop-Cluster", {"Force": SWITCH})

    def start_cluster_service(self, node: str) -> None:
        """Start-Service ClusSvc on the node, in its own session. Not Start-Cluster: run in one node's session it
        reaches the other nodes, a second hop Windows refuses without delegated credentials (Start-Cluster's docs:
        it cannot be run remotely without CredSSP), and the cluster stays stopped."""
        self.act(node, OWNED_COMMAND, {"Command": "Start-Service", "Name": "ClusSvc"}, timeout=600)

    def second_hop(self) -> str | None:
        """Whether a command in one node's session reaches another node (what Test-Cluster and CAU need): None
        when it does, else Windows' refusal (Test-SecondHop.ps1; it changes nothing)."""
        names = list(self.sessions)
        if len(names) < 2:
            return None
        try:
            self.session(names[0]).run(PackagedScript("Test-SecondHop.ps1", {"Name": names[1]}), timeout=120)
        except CmdletFailed as e:
            return f"from {names[0]} to {names[1]}: {e.errors[0].message}"
        return None

    def set_cluster_service(self, node: str, startup: str) -> None:
        """Set-Service -Name ClusSvc -StartupType Disabled|Automatic on the node."""
        if startup not in ("Disabled", "Automatic"):
            raise ValueError(startup)
        self.act(node, OWNED_COMMAND, {"Command": "Set-Service", "Name": "ClusSvc", "StartupType": startup})
