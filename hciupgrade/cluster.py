"""Typed operations on a cluster, built on the remote layer: read nodes, storage and groups; pause, drain, resume;
start the feature update; restart. Each method is one documented cmdlet call (reference/domain.md §3) and returns
plain typed data. Waiting and policy live elsewhere (steps.py, flows/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from hciupgrade.models import ClusterInventory
from hciupgrade.psenums import DrainStatus, HealthStatus, JobState, NodeState, ScheduledTaskState, parse
from hciupgrade.remote import (
    SWITCH,
    Cmdlet,
    CmdletFailed,
    NodeSession,
    NodeUnreachable,
    PackagedScript,
    RemoteError,
)

FEATURE_UPDATE_TASK = "HciUpgrade-FeatureUpdate"
CURRENT_VERSION_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"
SCHED_S_TASK_RUNNING = 0x41301
CLUSTER_SERVICE_DOWN = "ClusterServiceNotRunning"


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


class ClusterClient:
    """One cluster's nodes, reached through one NodeSession each."""

    def __init__(self, inventory: ClusterInventory, password: SecretStr,
                 sessions: dict[str, Any] | None = None) -> None:
        """`sessions` replaces the pypsrp sessions (the simulator's in-process ones, for property tests)."""
        self.name = inventory.name
        self.inventory = inventory
        self.sessions = sessions or {
            n.name: NodeSession(n, inventory.transport, inventory.credential.username, password)
            for n in inventory.nodes}

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()

    def session(self, node: str) -> NodeSession:
        return self.sessions[self.inventory.node(node).name]

    def call_seconds(self) -> list[float]:
        return [s for session in self.sessions.values() for s in session.call_seconds]

    def query(self, call: Cmdlet, exclude: str | None = None) -> list[Any]:
        """Run a cluster-wide query on the first reachable node, preferring nodes other than `exclude`."""
        names = [n for n in self.sessions if n != exclude] + ([exclude] if exclude in self.sessions else [])
        last: RemoteError | None = None
        for name in names:
            try:
                return self.sessions[name].run(call).objects
            except NodeUnreachable as e:
                last = e
            except CmdletFailed as e:  # a node still joining cannot answer for the cluster; ask the next one
                if not any(err.fq_error_id.startswith(CLUSTER_SERVICE_DOWN) for err in e.errors):
                    raise
                last = e
        raise NodeUnreachable(self.name, f"no node of the cluster answered ({last})")

    # --- reads ---------------------------------------------------------------------------------------------
    def nodes(self, exclude: str | None = None) -> list[NodeInfo]:
        return [NodeInfo.parse(o) for o in self.query(Cmdlet("Get-ClusterNode"), exclude)]

    def snapshot(self, exclude: str | None = None) -> ClusterSnapshot:
        nodes = self.nodes(exclude)
        disks = [DiskInfo(o["FriendlyName"], parse(HealthStatus, o["HealthStatus"]),
                          _operational(o["OperationalStatus"]))
                 for o in self.query(Cmdlet("Get-VirtualDisk"), exclude)]
        jobs = self.storage_jobs(exclude)
        pools = self.query(Cmdlet("Get-StoragePool", {"IsPrimordial": False}), exclude)
        pool = PoolInfo(pools[0]["FriendlyName"], parse(HealthStatus, pools[0]["HealthStatus"])) if pools else None
        return ClusterSnapshot(tuple(nodes), tuple(disks), tuple(jobs), pool)

    def storage_jobs(self, exclude: str | None = None) -> list[JobInfo]:
        return [JobInfo(o["Name"], parse(JobState, o["JobState"]), int(o.get("PercentComplete") or 0),
                        int(o.get("BytesProcessed") or 0), int(o.get("BytesTotal") or 0))
                for o in self.query(Cmdlet("Get-StorageJob"), exclude)]

    def roles_per_node(self) -> dict[str, int]:
        counts = {name: 0 for name in self.sessions}
        for group in self.query(Cmdlet("Get-ClusterGroup")):
            if str(group.get("GroupType")) == "VirtualMachine" and group.get("OwnerNode") in counts:
                counts[group["OwnerNode"]] += 1
        return counts

    def os_build(self, node: str) -> str:
        """10.0.<CurrentBuildNumber>.<UBR> from the node's registry (reference/domain.md §4.2)."""
        obj = self.session(node).run(Cmdlet("Get-ItemProperty", {"Path": CURRENT_VERSION_KEY})).objects[0]
        return f"10.0.{obj['CurrentBuildNumber']}.{obj['UBR']}"

    def reachable(self, node: str) -> bool:
        """Whether the node answers on WinRM (a registry read: it needs no cluster service)."""
        try:
            self.session(node).run(Cmdlet("Get-ItemProperty", {"Path": CURRENT_VERSION_KEY}), timeout=30)
            return True
        except NodeUnreachable:
            return False

    # --- changes ---------------------------------------------------------------------------------------------
    def cau_run_state(self) -> str:
        """Get-CauRun's RunState: RunNotInProgress, RunInProgress or RunFailed."""
        objects = self.query(Cmdlet("Get-CauRun", {"ClusterName": self.name}))
        return str(objects[0]) if objects else "RunNotInProgress"

    def quorum_witness(self) -> str | None:
        objects = self.query(Cmdlet("Get-ClusterQuorum"))
        return objects[0].get("QuorumResource") if objects else None

    def media_build(self, node: str, setup_path: str) -> str:
        """The build the feature update on this node would install: the media's install.wim, image 1."""
        image = setup_path.rstrip("\\") + "\\sources\\install.wim"
        obj = self.session(node).run(Cmdlet("Get-WindowsImage", {"ImagePath": image, "Index": 1})).objects[0]
        return str(obj["Version"])

    def run_node_script(self, node: str, path: str, phase: str) -> None:
        self.session(node).run(PackagedScript("Invoke-NodeScript.ps1", {"Path": path, "Phase": phase}))

    def feature_update_task_exists(self, node: str) -> bool:
        try:
            self.session(node).run(Cmdlet("Get-ScheduledTask", {"TaskName": FEATURE_UPDATE_TASK}))
            return True
        except CmdletFailed:
            return False

    def suspend(self, node: str, *, force_drain: bool = False) -> NodeInfo:
        params: dict[str, Any] = {"Name": node, "Drain": SWITCH}
        if force_drain:
            params["ForceDrain"] = SWITCH
        return NodeInfo.parse(self.session(node).run(Cmdlet("Suspend-ClusterNode", params)).objects[0])

    def node_info(self, node: str) -> NodeInfo:
        """The cluster's view of `node`, asked of another node first."""
        return NodeInfo.parse(self.query(Cmdlet("Get-ClusterNode", {"Name": node}), exclude=node)[0])

    def resume(self, node: str, failback: str) -> NodeInfo:
        objects = self.session(node).run(Cmdlet("Resume-ClusterNode", {"Name": node, "Failback": failback})).objects
        return NodeInfo.parse(objects[0])

    def register_feature_update(self, node: str, setup_path: str) -> None:
        self.session(node).run(PackagedScript("Register-FeatureUpdateTask.ps1",
                                              {"SetupPath": setup_path, "TaskName": FEATURE_UPDATE_TASK}))

    def start_feature_update(self, node: str) -> None:
        self.session(node).run(Cmdlet("Start-ScheduledTask", {"TaskName": FEATURE_UPDATE_TASK}))

    def stop_feature_update(self, node: str) -> None:
        self.session(node).run(Cmdlet("Stop-ScheduledTask", {"TaskName": FEATURE_UPDATE_TASK}))

    def feature_update_result(self, node: str) -> int:
        """Setup's exit code so far: LastTaskResult (0x41301 while the task runs)."""
        info = self.session(node).run(Cmdlet("Get-ScheduledTaskInfo", {"TaskName": FEATURE_UPDATE_TASK})).objects[0]
        return int(info["LastTaskResult"]) & 0xFFFFFFFF

    def feature_update_status(self, node: str) -> tuple[ScheduledTaskState, int]:
        """The task's state and setup's exit code (LastTaskResult; 0x41301 while it runs)."""
        session = self.session(node)
        task = session.run(Cmdlet("Get-ScheduledTask", {"TaskName": FEATURE_UPDATE_TASK})).objects[0]
        info = session.run(Cmdlet("Get-ScheduledTaskInfo", {"TaskName": FEATURE_UPDATE_TASK})).objects[0]
        return parse(ScheduledTaskState, task["State"]), int(info["LastTaskResult"]) & 0xFFFFFFFF

    def restart(self, node: str) -> None:
        """Restart-Computer -Force. The connection may drop before the answer: that is the restart working."""
        try:
            self.session(node).run(Cmdlet("Restart-Computer", {"Force": SWITCH}), timeout=60)
        except NodeUnreachable:
            pass
        self.session(node).reset()
