"""Scenario files (YAML): the cluster's shape, its durations and the faults to inject.

The same files drive the demo, the tests and the benchmarks. Every field is validated; an unknown field is an error,
so a typo never silently turns a fault off.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hciupgrade.models import format_validation, read_yaml
from hciupgrade.sim.arm import ArmFaults

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VmSpec(Strict):
    """A VM and its cluster role."""

    name: str
    owner: str
    memory_gb: float = Field(16, gt=0)
    dynamic_memory: bool = False
    state: str = Field("Running", description=(
        "the VM's Hyper-V state at the start (any VMState name: Running, Off, Saved, Paused, Saving, FastSaved, "
        "RunningCritical, ...); only a Running VM is live-migrated, shut down or started by hci-upgrade"))

    locked_console: bool = Field(False, description=(
        "someone is logged on to the guest's console and locked it: Stop-VM without -Force prompts, which a remote "
        "session cannot answer (Msvm_ShutdownComponent.InitiateShutdown returns 32781, 'The machine is locked and "
        "cannot be shut down without the force option')"))

    @field_validator("state")
    @classmethod
    def _known_state(cls, value: str) -> str:
        from hciupgrade.psenums import VMState, parse

        try:
            return parse(VMState, value).name
        except ValueError as e:
            raise ValueError(str(e)) from None


class VolumeSpec(Strict):
    name: str
    size_gb: float = Field(2048, gt=0)
    resiliency: Literal["Mirror", "Parity"] = "Mirror"


class NodeSpec(Strict):
    name: str
    state: Literal["Up", "Paused"] = "Up"
    media_build: str | None = Field(None, description="the build of the setup media on this node (default: "
                                                       "the cluster's target_build)")
    build: str | None = Field(None, pattern=r"^10\.0\.\d{5}\.\d+$",
                              description="this node's build now (default: the cluster's build)")
    package_build: str | None = Field(None, description="the build of the cumulative update staged on this node "
                                                        "(default: the cluster's lcu_build)")
    package_missing: bool = Field(False, description="the cumulative update is not staged on this node")
    remote_shutdown_rule: bool = Field(True, description="the firewall rule group 'Remote Shutdown' is enabled")
    reboot_pending: bool = Field(False, description="a restart is pending (see reboot_pending_source)")
    reboot_pending_source: Literal["cbs", "windows-update", "file-rename"] = Field(
        "cbs", description="where Windows says so: the servicing stack's RebootPending key, Windows Update's "
                           "RebootRequired key, or PendingFileRenameOperations under Session Manager")
    auto_update: Literal["notify", "install"] = Field(
        "notify", description="the Windows Update policy: install means updates install (and restart) on their own")
    no_auto_update: bool = Field(False, description="NoAutoUpdate 1: automatic updates are off, whatever AUOptions "
                                                    "says")
    nic_vendor: Literal["Intel", "Mellanox", "Broadcom"] = Field(
        "Intel", description="the physical NICs' driver provider (Get-NetAdapter -Physical: DriverProvider)")
    nic_driver: str = Field("1.17.73.0", description="their DriverVersionString: the 24H2 path wants it newer than "
                                                     "the target's inbox driver (hciupgrade/targets.py)")
    """A node that starts Paused was paused by someone else (an operator): the orchestrator must not resume it."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NODE_NAME.match(v):
            raise ValueError("a node name is 1 to 15 letters, digits or dashes (a NetBIOS name)")
        return v


class Durations(Strict):
    """Cluster-time durations; the clock scales them. Figures: reference/anchors.md §3."""

    live_migration_gb_per_s: float = Field(2.0, gt=0, description="live-migration throughput per VM move")
    vm_move_overhead_s: float = Field(20, ge=0, description="fixed cost of each live migration")
    install_minutes: float = Field(45, gt=0, description="setup's down-level phase (the feature update install): "
                                                         "the shortest a node takes")
    install_spread_minutes: float = Field(45, ge=0, description="each node takes install_minutes plus up to this "
                                                                "much more, fixed per node (45-90 min by default)")
    reboot_minutes: float = Field(10, gt=0, description="a plain restart (no staged feature update), until WinRM "
                                                        "is back")
    lcu_install_minutes: float = Field(20, gt=0, description="the cumulative update's install (wusa.exe)")
    feature_update_restarts: int = Field(3, ge=1, le=10, description="restarts setup's offline phases take")
    feature_update_restart_minutes: float = Field(
        40, gt=0, description="the restart that installs the feature update, all its restarts, until WinRM is back")
    join_seconds: float = Field(30, ge=0, description="Joining after WinRM is up, before the node is back Paused")
    write_mb_per_s: float = Field(40, ge=0, description="data written to the volumes while a node is away")
    repair_mb_per_s: float = Field(500, gt=0, description="resync throughput")
    completed_job_linger_s: float = Field(60, ge=0, description="how long a Completed storage job stays listed")


class FaultKind(StrEnum):
    drain_fails = "drain_fails"  # a VM that will not live-migrate: DrainStatus Failed
    install_fails = "install_fails"  # setup's down-level phase fails (LastTaskResult 0xC1900101)
    lcu_fails = "lcu_fails"  # the cumulative update's wusa.exe fails (0x80070643)
    pool_update_refused = "pool_update_refused"  # Update-StoragePool fails (any node names the cluster's pool)
    vm_shutdown_fails = "vm_shutdown_fails"  # a VM owned by this node does not shut down (Stop-VM fails)
    no_return = "no_return"  # the node does not come back from its reboot
    # the node's first restart takes `late_minutes` longer than usual: firmware, POST, a slow disk (anchors.md:
    # restarts "5 to 15 min typical, tail to 30+ min"; Ansible's win_reboot: 600 s "may not suffice")
    slow_return = "slow_return"
    repair_stalls = "repair_stalls"  # the resync stops making progress
    winrm_refused = "winrm_refused"  # the node's WinRM port is closed from the start
    pre_script_fails = "pre_script_fails"  # the PreUpdateScript throws on this node
    post_script_fails = "post_script_fails"  # the PostUpdateScript throws on this node
    restarts_after_staging = "restarts_after_staging"  # a node staged in service restarts on its own, undrained


class Fault(Strict):
    node: str
    kind: FaultKind
    vm: str | None = Field(None, description="drain_fails: the VM that will not move (default: the node's first)")
    at_percent: float = Field(40, ge=0, lt=100, description="repair_stalls / install_fails / lcu_fails: where it "
                                                            "stops")
    times: int | None = Field(None, ge=1, description="drain_fails / install_fails / *_script_fails: how many "
                                                      "times it strikes (default: every time)")
    late_minutes: float = Field(60, gt=0, description="slow_return: how much longer its first restart takes")
    after_minutes: float = Field(5, ge=0, description="restarts_after_staging: how long after its staging ends it "
                                                      "restarts (0: at once, before a poll sees the staging end)")


class Knobs(Strict):
    """Behaviour the reference marks [UNVERIFIED] or that changed between releases."""

    storage_maintenance_mode: bool = Field(
        True, description="21H2+: a paused node's drives are in maintenance; repair starts on resume"
    )
    resume_not_paused: Literal["noop", "error"] = Field(
        "noop", description="Resume-ClusterNode on a node that is not paused (ERROR_CLUSTER_NODE_NOT_PAUSED?)"
    )
    setup_success_codes: tuple[int, ...] = Field((0,), description="setup.exe exit codes that mean success")
    cau_run_state: Literal["RunNotInProgress", "RunInProgress", "RunFailed"] = Field(
        "RunNotInProgress", description="what Get-CauRun reports (a CAU run left behind blocks the upgrade)")
    witness: Literal["Cloud Witness", "File Share Witness", "none"] = "Cloud Witness"
    pool_version_after: int = Field(29, ge=28, description="the pool Version (raw CIM value) Update-StoragePool "
                                                           "sets; 22H2 pools are below 28 [UNVERIFIED values]")
    task_start_lag_seconds: float = Field(
        30, ge=0, description=(
            "cluster seconds a freshly started scheduled task still reads LastTaskResult 0x41303 (SCHED_S_TASK_HAS_"
            "NOT_RUN) before the Task Scheduler reports it running (0x41301); 0 answers at once"))
    second_hop: Literal["denied", "allowed"] = Field(
        "denied", description=(
            "a command run in one node's session that reaches another node (Start-Cluster, Test-Cluster, "
            "Invoke-Command to another node) is refused there, as a domain without delegation refuses it (access "
            "denied); allowed: CredSSP, or resource-based constrained delegation"))
    display_language: Literal["en-US", "de-DE"] = Field(
        "en-US", description="the nodes' display language: display names Windows localises (a firewall rule "
                             "group's DisplayGroup) come in it; indirect strings (@firewallapi.dll,-36751) do not")
    pool_version_form: Literal["text", "number"] = Field(
        "text", description="how Get-StoragePool shows Version: the Storage module's friendly text, as a real "
                            "node does ('Windows Server 2016 RS3' in a real Format-List *), or the raw number")
    storage_replica: bool = Field(False, description="Storage Replica is configured (Get-SRGroup returns groups): "
                                                     "each node needs a second restart after the update")
    validation_warnings: list[str] = Field(
        default_factory=lambda: ["Validate Windows Firewall Configuration"],
        description="Test-Cluster tests that end in a warning (a real cluster usually has a few)")
    cluster_down_error: Literal["ClusterEndpointNotRegistered", "ClusterRpcConnection"] = Field(
        "ClusterEndpointNotRegistered",
        description="what a failover-cluster cmdlet answers on a node whose cluster service is not running")
    staging_slowdown: float = Field(
        1.3, ge=1, description=(
            "[UNVERIFIED] how much longer setup's first phase takes on a node that serves its VMs (PreStage), and "
            "a live migration from or to such a node: setup and the workloads compete for CPU and storage I/O; "
            "no published procedure stages a node in service, so the harsher side by default; 1 for none"))
    mixed_version_migration: Literal["fails", "works"] = Field(
        "fails", description=(
            "live migration of a running VM between nodes on different OS builds (22H2 and the target) during the "
            "rolling upgrade: Cluster OS Rolling Upgrade supports it, but practitioners report VMs that would not "
            "move between 22H2 and 23H2 nodes (reference/domain.md §1.0 P4), and Microsoft's current pages "
            "recommend shutting the VMs down: fails (harsher, the default) leaves the VM on its node and the drain "
            "fails; works moves it"))
    enum_forms: dict[EnumName, Literal["enum", "string", "integer"]] = Field(
        default_factory=dict,
        description="how an enum property travels, per .NET enum (psenums class name): a .NET enum object (the "
                    "default), a plain string (serialized at remoting's default depth), or a bare integer (CIM)")


EnumName = Literal["NodeState", "DrainStatus", "NodeStatusInformation", "HealthStatus", "OperationalStatus",
                   "JobState", "ScheduledTaskState", "GroupState", "GroupType", "CauRunState"]

REQUIRED_FEATURES = ("Failover-Clustering", "FS-VSS-Agent", "FS-Resource-Manager", "GPMC", "NetworkATC",
                     "NetworkController", "RSAT-AD-Powershell", "RSAT-Hyper-V-Tools", "Data-Center-Bridging",
                     "NetworkVirtualization", "RSAT-AD-AdminCenter")


class NodeReadiness(BaseModel):
    """What the environment checker finds on one node (reference/domain.md §2.2); the defaults pass. Not frozen:
    the simulator keeps a copy per node that remediation changes."""

    model_config = ConfigDict(extra="forbid")

    lcu_ubr: int | None = Field(None, description="the 23H2 LCU's UBR; default: the node's build (2503 ISO: 1486, "
                                                  "which the current module's minimum 1904 fails)")
    missing_features: list[str] = Field(default_factory=list)
    pending_features: list[str] = Field(default_factory=list, description="installed, waiting for a restart")
    network_atc_service: Literal["Running", "Stopped", "Missing"] = "Running"
    tpm_ready: bool = True
    bitlocker_protection: Literal["On", "Off", "None"] = "Off"
    wdac_enforced: bool = False
    arc_cloud: str | None = "AzureCloud"
    akshci_state: str = "NotInstalled"
    moc_state: str = "NotInstalled"
    moc_services: list[str] = Field(default_factory=list)
    language: str = "en-US"
    lcm_version: str | None = "10.2408.0.537"
    free_memory_gb: float = 96
    orchestrator_service: bool = False
    registry: dict[str, int] = Field(default_factory=dict, description="values set under the 1.1 keys")
    vid_key: bool = Field(False, description=r"HKLM\SYSTEM\CurrentControlSet\Services\Vid\Parameters exists")


class ClusterReadiness(Strict):
    module: Literal["aggregated", "per-node"] = "aggregated"
    module_installed: bool = True
    registered: bool = True
    sites: int = Field(1, ge=1)
    cluster_ip_v6: bool = False
    intents: list[Literal["management", "compute", "storage"]] = ["management", "compute", "storage"]
    intent_status: Literal["Success", "Failed", "Validating"] = "Success"
    infrastructure_volume: bool = False
    nodes: dict[str, NodeReadiness] = Field(default_factory=dict)


class ClusterSpec(Strict):
    name: str = "hci-demo"
    nodes: list[NodeSpec] = Field(min_length=2, max_length=16)
    vms: list[VmSpec] = Field(default_factory=list)
    volumes: list[VolumeSpec] = Field(min_length=1)
    build: str = "10.0.20349.2966"
    target_build: str = "10.0.25398.1486"
    lcu_build: str = Field("10.0.25398.1913", description="the build the staged 23H2 cumulative update installs")
    cloud_management_group: bool = Field(
        True, description="the 'Cloud Management' cluster group of a registered 22H2 cluster (reference/domain.md "
                          "§3.4): its absence triggers RepairRegistration; the 24H2 path removes it")
    functional_level: int = 11
    pool_version: int = 27

    @field_validator("name")
    @classmethod
    def _cluster_name(cls, v: str) -> str:
        if not NODE_NAME.match(v):
            raise ValueError("a cluster name is 1 to 15 letters, digits or dashes")
        return v

    @property
    def target_release(self) -> str:
        """The release the media goes to, named as the inventory names it (hciupgrade/targets.py)."""
        return {"25398": "23H2", "26100": "24H2"}.get(self.target_build.split(".")[2], "23H2")

    @field_validator("build", "target_build", "lcu_build")
    @classmethod
    def _build(cls, v: str) -> str:
        if not re.match(r"^10\.0\.\d{5}\.\d+$", v):
            raise ValueError("a build is 10.0.<build>.<UBR>, e.g. 10.0.25398.1486")
        return v

    @model_validator(mode="after")
    def _refs(self) -> ClusterSpec:
        names = [n.name for n in self.nodes]
        if len(set(n.lower() for n in names)) != len(names):
            raise ValueError("node names must be unique")
        for vm in self.vms:
            if vm.owner not in names:
                raise ValueError(f"vm {vm.name!r}: owner {vm.owner!r} is not a node of the cluster "
                                 f"({', '.join(names)})")
        return self


class Scenario(Strict):
    cluster: ClusterSpec
    durations: Durations = Durations()
    time_factor: float = Field(1000, gt=0, le=100_000, description="cluster seconds per wall second")
    knobs: Knobs = Knobs()
    faults: list[Fault] = Field(default_factory=list)
    readiness: ClusterReadiness = ClusterReadiness()
    azure: ArmFaults = Field(default_factory=ArmFaults, description="the simulated Azure's failures (sim/arm.py)")

    @model_validator(mode="after")
    def _fault_refs(self) -> Scenario:
        names = {n.name for n in self.cluster.nodes}
        for i, fault in enumerate(self.faults):
            if fault.node not in names:
                raise ValueError(f"faults[{i}].node: {fault.node!r} is not a node of the cluster "
                                 f"({', '.join(sorted(names))})")
            if fault.vm and fault.vm not in {vm.name for vm in self.cluster.vms if vm.owner == fault.node}:
                raise ValueError(f"faults[{i}].vm: {fault.vm!r} is not a VM owned by {fault.node}")
        for node in self.readiness.nodes:
            if node not in names:
                raise ValueError(f"readiness.nodes.{node}: not a node of the cluster ({', '.join(sorted(names))})")
        return self

    def faults_for(self, node: str, kind: FaultKind) -> Fault | None:
        return next((f for f in self.faults if f.node == node and f.kind == kind), None)


class ScenarioError(ValueError):
    """A scenario that does not validate; the message names the field, the value and what is allowed."""


def load_scenario(path: str | Path) -> Scenario:
    return parse_scenario(read_yaml(path, "scenario", ScenarioError), source=str(path))


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with 'cluster' at the top")
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(format_validation(source, e, what='scenario')) from None


SCENARIO_DIR = Path(__file__).parent / "scenarios"


def builtin_scenario(name: str = "demo") -> Scenario:
    return load_scenario(SCENARIO_DIR / f"{name}.yaml")


def make_scenario(
    nodes: int = 4,
    vms_per_node: int = 3,
    faults: list[dict] | None = None,
    time_factor: float = 1000,
    knobs: dict | None = None,
    **cluster: object,
) -> Scenario:
    """A scenario built in code, the shape of the demo's (tests and benchmarks)."""
    names = [f"node{i + 1}" for i in range(nodes)]
    data = {
        "cluster": {
            "nodes": [{"name": n} for n in names],
            "vms": [
                {"name": f"vm-{n}-{j + 1}", "owner": n, "memory_gb": 16}
                for n in names
                for j in range(vms_per_node)
            ],
            "volumes": [{"name": f"Volume0{k + 1}", "size_gb": 2048} for k in range(3)],
            **cluster,
        },
        "time_factor": time_factor,
        "faults": faults or [],
        "knobs": knobs or {},
    }
    return parse_scenario(data, source="generated scenario")
