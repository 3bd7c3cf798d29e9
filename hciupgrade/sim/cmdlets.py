"""The cmdlets the simulated cluster answers, with their real names, parameters, output types and errors.

Each handler binds its parameters like PowerShell does (unknown parameter: a ParameterBindingException; unknown
cmdlet: CommandNotFoundException), asks the state machine (cluster.py), and returns `Out` objects whose type names
and properties match the real ones (reference/domain.md §3). Enum values are psenums members; pstypes.py turns
them into .NET enums on the wire. Storage objects are CIM instances: the raw number is the adapted property and
the Storage module's type data adds the enum name as an extended one, as on a real node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hciupgrade.psenums import (
    DrainStatus,
    FailbackType,
    GroupState,
    GroupType,
    HealthStatus,
    NodeState,
    OperationalStatus,
    ProvisioningType,
    parse,
)
from hciupgrade.sim.cluster import (
    CUMULATIVE_UPDATE_TASK,
    ERROR_CLUSTER_SPACE_DEGRADED,
    FEATURE_UPDATE_TASK,
    FENCE_KEY,
    MARKER_KEY,
    Node,
    Refused,
    SimCluster,
    StorageJob,
    VirtualDisk,
)

SWITCH = object()  # a switch parameter given without a value

CLUSTER_NS = "Microsoft.FailoverClusters.PowerShell"
CIM = "Microsoft.Management.Infrastructure.CimInstance"
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"


def cim_types(namespace: str, cls: str) -> list[str]:
    return [f"{CIM}#{namespace}/{cls}", f"{CIM}#{cls}", CIM, "System.Object"]


@dataclass
class Out:
    """One output object: .NET type names, adapted properties, extended (note/script) properties."""

    type_names: list[str]
    props: dict[str, Any]
    extended: dict[str, Any] = field(default_factory=dict)
    to_string: str | None = None


@dataclass
class ErrorOut:
    """An error record as a real node writes it: message, FullyQualifiedErrorId, category, target, the exception's
    type and HResult; `activity` is the cmdlet that wrote it (set by
    `invoke` when a handler leaves it empty), as CategoryInfo.Activity and InvocationInfo.MyCommand show."""

    message: str
    fq_error_id: str
    category: str = "NotSpecified"
    target: str | None = None
    exception_type: str = "System.Management.Automation.RuntimeException"
    hresult: int = -2146233087
    activity: str | None = None


class Terminating(Exception):
    """A terminating error: the pipeline ends Failed with this record."""

    def __init__(self, error: ErrorOut) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Invocation:
    sim: SimCluster
    node: str  # the node whose endpoint received the call
    caller: str  # the authenticated user
    params: dict[str, Any]
    input: list[Out]
    errors: list[ErrorOut] = field(default_factory=list)
    command: str = ""  # the cmdlet's name, for error ids


Handler = Callable[[Invocation], list[Out]]


@dataclass(frozen=True)
class Spec:
    handler: Handler
    params: frozenset[str]
    positional: tuple[str, ...] = ()
    command_class: str = ""


REGISTRY: dict[str, Spec] = {}


def cmdlet(name: str, params: str = "", positional: tuple[str, ...] = (), command_class: str = ""):
    common = {"ErrorAction", "WarningAction", "Verbose", "Debug", "WhatIf", "Confirm", "Cluster", "InputObject"}

    def register(fn: Handler) -> Handler:
        REGISTRY[name.lower()] = Spec(fn, frozenset(params.split()) | common, positional, command_class or name)
        return fn

    return register


# --- binding ---------------------------------------------------------------------------------------------------
def bind(spec: Spec, name: str, raw: list[tuple[str | None, Any]]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    positional = list(spec.positional)
    allowed = {p.lower(): p for p in spec.params}
    for pname, value in raw:
        if pname is None:
            if not positional:
                raise Terminating(ErrorOut(
                    f"A positional parameter cannot be found that accepts argument '{value}'.",
                    f"PositionalParameterNotFound,{spec.command_class}", "InvalidArgument",
                    exception_type="System.Management.Automation.ParameterBindingException"))
            bound[positional.pop(0)] = value
            continue
        canonical = allowed.get(pname.lower())
        if canonical is None:
            raise Terminating(ErrorOut(
                f"A parameter cannot be found that matches parameter name '{pname}'.",
                f"NamedParameterNotFound,{spec.command_class}", "InvalidArgument",
                exception_type="System.Management.Automation.ParameterBindingException"))
        bound[canonical] = SWITCH if value is None else value
    return bound


ACTION_PREFERENCES = {"continue", "stop", "silentlycontinue", "ignore", "inquire", "suspend"}


def invoke(sim: SimCluster, node: str, caller: str, commands: list[tuple[str, list[tuple[str | None, Any]]]],
           ) -> tuple[list[Out], list[ErrorOut]]:
    """Run one statement (a pipeline of commands) on `node`. Raises Terminating for a terminating error.

    A handler writes a non-terminating error by appending to `inv.errors` and goes on; -ErrorAction decides what
    becomes of it, as in PowerShell: Stop makes the first one terminating, SilentlyContinue and Ignore hide it,
    Continue (the default) writes it to the error stream. A terminating error (Terminating, Refused) is not
    affected by -ErrorAction."""
    errors: list[ErrorOut] = []
    data: list[Out] = []
    with sim.lock:
        sim.advance()
        for i, (name, raw) in enumerate(commands):
            spec = REGISTRY.get(name.lower())
            if spec is None:
                raise Terminating(ErrorOut(
                    f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or "
                    "operable program. Check the spelling of the name, or if a path was included, verify that "
                    "the path is correct and try again.",
                    "CommandNotFoundException", "ObjectNotFound", target=name,
                    exception_type="System.Management.Automation.CommandNotFoundException", activity=name))
            mine: list[ErrorOut] = []
            params = bind(spec, name, raw)
            action = error_action(spec, params)
            inv = Invocation(sim, node, caller, params, data if i else [], mine, spec.command_class)
            try:
                data = spec.handler(inv)
            except Refused as refused:
                raise Terminating(cluster_error(refused, spec)) from None
            except Terminating as terminating:
                terminating.error.activity = terminating.error.activity or spec.command_class
                raise
            for error in mine:
                error.activity = error.activity or spec.command_class
            if mine and action == "stop":
                raise Terminating(mine[0])
            if action not in ("silentlycontinue", "ignore"):
                errors += mine
    return data, errors


def error_action(spec: Spec, params: dict[str, Any]) -> str:
    value = params.get("ErrorAction")
    if value is None:
        return "continue"
    text = str(value).lower()
    if text not in ACTION_PREFERENCES:
        raise Terminating(ErrorOut(
            f"Cannot bind parameter 'ErrorAction'. Cannot convert value \"{value}\" to type "
            "\"System.Management.Automation.ActionPreference\". Error: \"Unable to match the identifier name "
            f"{value} to a valid enumerator name. Specify one of the following enumerator names and try again:"
            "\r\nSilentlyContinue, Stop, Continue, Inquire, Ignore, Suspend\"",
            f"CannotConvertArgumentNoMessage,{spec.command_class}", "InvalidArgument",
            exception_type="System.Management.Automation.ParameterBindingException"))
    return text


def hresult_of(code: int) -> int:
    """The signed HResult a .NET exception carries for a Win32 code (HRESULT_FROM_WIN32) or an HRESULT."""
    value = code if code >= 0x10000 else 0x80070000 | code
    return value - 0x100000000 if value >= 0x80000000 else value


def cluster_error(refused: Refused, spec: Spec) -> ErrorOut:
    return ErrorOut(
        refused.args[0], f"{spec.command_class},{command_class(spec.command_class)}",
        "ResourceUnavailable" if refused.code == ERROR_CLUSTER_SPACE_DEGRADED else "InvalidOperation",
        target=refused.node, exception_type=f"{CLUSTER_NS}.ClusterCmdletException", hresult=hresult_of(refused.code))


def names_param(inv: Invocation, key: str = "Name") -> list[str] | None:
    value = inv.params.get(key)
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# What a failover-cluster cmdlet answers on a node whose cluster service is not running (down, joining): the
# endpoint mapper has no cluster endpoint (EPT_S_NOT_REGISTERED, 1753), or RPC is unavailable (1722).
CLUSTER_DOWN_ERRORS = {
    "ClusterEndpointNotRegistered": ("There are no more endpoints available from the endpoint mapper", 1753),
    "ClusterRpcConnection": ("The RPC server is unavailable", 1722),  # [INFER] the second line's text
}


def command_class(cmdlet_name: str) -> str:
    """The .NET class of a FailoverClusters cmdlet: Get-ClusterNode -> ...GetClusterNodeCommand."""
    return f"{CLUSTER_NS}.{cmdlet_name.replace('-', '')}Command"


def require_cluster_node(inv: Invocation) -> None:
    node = inv.sim.nodes[inv.node]
    if node.state not in (NodeState.Up, NodeState.Paused):
        kind = inv.sim.knobs.cluster_down_error
        detail, code = CLUSTER_DOWN_ERRORS[kind]
        raise Terminating(ErrorOut(
            "The cluster service is not running.  Make sure that the service is running on all nodes in the "
            f"cluster.\n    {detail}", f"{kind},{command_class(inv.command)}", "ConnectionError",
            exception_type=f"{CLUSTER_NS}.ClusterCmdletException", hresult=hresult_of(code)))


def select_nodes(inv: Invocation) -> list[Node]:
    wanted = names_param(inv)
    if inv.input and wanted is None:
        wanted = [o.props["Name"] for o in inv.input if "Name" in o.props]
    if wanted is None:
        return list(inv.sim.nodes.values())
    found = []
    for name in wanted:
        try:
            found.append(inv.sim.node(name))
        except KeyError:
            inv.errors.append(ErrorOut(
                f"The cluster node '{name}' was not found.", f"ClusterObjectNotFound,{command_class(inv.command)}",
                "ObjectNotFound", target=name, exception_type=f"{CLUSTER_NS}.ClusterCmdletException"))
    return found


def cluster_node(sim: SimCluster, node: Node) -> Out:
    major, minor, build, _ = node.build.split(".")
    return Out(
        [f"{CLUSTER_NS}.ClusterNode", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
        {
            "Name": node.name,
            "Id": str(list(sim.nodes).index(node.name) + 1),
            "State": node.state,
            "StatusInformation": node.status_information,
            "DrainStatus": node.drain_status,
            "DrainTarget": 0xFFFFFFFF,
            "BuildNumber": int(build),
            "MajorVersion": int(major),
            "MinorVersion": int(minor),
            "CSDVersion": "",
            "NodeWeight": 1,
            "DynamicWeight": 1 if node.state == NodeState.Up else 0,
            "FaultDomain": f"Site:Default;Rack:Default;Chassis:Default;Node:{node.name}",
            "Manufacturer": "Contoso",
            "Model": "HCI-Node 2U",
            "SerialNumber": hashlib.sha1(node.name.encode()).hexdigest()[:10].upper(),
            "Cluster": sim.name,
        },
        to_string=node.name,
    )


# --- FailoverClusters ------------------------------------------------------------------------------------------
@cmdlet("Get-ClusterNode", "Name", positional=("Name",), command_class="Get-ClusterNode")
def get_cluster_node(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    return [cluster_node(inv.sim, n) for n in select_nodes(inv)]


@cmdlet("Suspend-ClusterNode", "Name Drain ForceDrain Wait TargetNode", positional=("Name", "TargetNode"))
def suspend_cluster_node(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    if "Wait" in inv.params:
        # Blocking on a drain inside a WinRM call is what DESIGN.md says not to do; the simulator refuses it
        # so the orchestrator never learns to rely on it.
        raise Terminating(ErrorOut("The simulator does not support -Wait: poll DrainStatus instead.",
                                   "NotSupported,Suspend-ClusterNode", "NotImplemented"))
    names = names_param(inv) or [inv.node]
    out = []
    for name in names:
        try:
            node = inv.sim.node(name)
        except KeyError:
            raise Terminating(ErrorOut(f"The cluster node '{name}' was not found.",
                                       f"ClusterObjectNotFound,{CLUSTER_NS}.SuspendClusterNodeCommand",
                                       "ObjectNotFound", target=name)) from None
        node = inv.sim.suspend(node.name, drain="Drain" in inv.params, force_drain="ForceDrain" in inv.params,
                               by=inv.caller)
        out.append(cluster_node(inv.sim, node))
    return out


@cmdlet("Resume-ClusterNode", "Name Failback", positional=("Name", "Failback"))
def resume_cluster_node(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    failback = inv.params.get("Failback", "NoFailback")
    try:
        failback_name = parse(FailbackType, failback).name if failback is not SWITCH else "Immediate"
    except ValueError:
        raise Terminating(ErrorOut(
            f"Cannot bind parameter 'Failback'. Cannot convert value \"{failback}\" to type "
            f"\"{CLUSTER_NS}.ResumeClusterNodeFailbackType\". Specify one of the following enumerator names and "
            "try again: NoFailback, Immediate, Policy",
            "CannotConvertArgumentNoMessage,Microsoft.FailoverClusters.PowerShell.ResumeClusterNodeCommand",
            "InvalidArgument", exception_type="System.Management.Automation.ParameterBindingException")) from None
    names = names_param(inv) or [inv.node]
    out = []
    for name in names:
        try:
            node = inv.sim.node(name)
        except KeyError:
            raise Terminating(ErrorOut(f"The cluster node '{name}' was not found.",
                                       f"ClusterObjectNotFound,{CLUSTER_NS}.ResumeClusterNodeCommand",
                                       "ObjectNotFound", target=name)) from None
        out.append(cluster_node(inv.sim, inv.sim.resume(node.name, failback=failback_name, by=inv.caller)))
    return out


@cmdlet("Get-ClusterGroup", "Name", positional=("Name",))
def get_cluster_group(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    sim = inv.sim
    owners = {o.props["Name"] for o in inv.input} if inv.input else None
    core = next((n.name for n in sim.nodes.values() if n.state == NodeState.Up), inv.node)
    groups = [("Cluster Group", core, GroupType.ClusterGroup, GroupState.Online),
              ("Available Storage", core, GroupType.AvailableStorage, GroupState.Offline),
              ("Cloud Management", core, GroupType.Unknown, GroupState.Online)]
    groups += [(vm.name, vm.owner, GroupType.VirtualMachine, GroupState[vm.state]) for vm in sim.vms.values()]
    wanted = names_param(inv)
    out = []
    for name, owner, gtype, state in groups:
        if owners is not None and owner not in owners:
            continue
        if wanted is not None and name not in wanted:
            continue
        out.append(Out([f"{CLUSTER_NS}.ClusterGroup", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
                       {"Name": name, "OwnerNode": owner, "State": state, "GroupType": gtype, "Priority": 2000,
                        "IsCoreGroup": gtype != GroupType.VirtualMachine, "Cluster": sim.name},
                       to_string=name))
    return out


@cmdlet("Get-Cluster", "Name", positional=("Name",))
def get_cluster(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    sim = inv.sim
    return [Out([f"{CLUSTER_NS}.Cluster", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
                {"Name": sim.name, "ClusterFunctionalLevel": sim.functional_level,
                 "ClusterUpgradeVersion": 3 if sim.functional_level >= 12 else 1, "S2DEnabled": 1,
                 "QuarantineThreshold": 3, "QuarantineDuration": 7200, "DynamicQuorum": 1,
                 "MaximumParallelMigrations": 1}, to_string=sim.name)]


NON_INTERACTIVE = ErrorOut("PowerShell is in NonInteractive mode. Read and Prompt functionality is not available.",
                          "HostFunctionNotImplemented", "NotImplemented",
                          exception_type="System.Management.Automation.Host.HostException")


@cmdlet("Update-ClusterFunctionalLevel", "Force", positional=())
def update_cluster_functional_level(inv: Invocation) -> list[Out]:
    """Irreversible. -WhatIf tests whether it would succeed and changes nothing; without -Force it prompts, which
    a remote session cannot answer."""
    require_cluster_node(inv)
    sim = inv.sim
    if "WhatIf" in inv.params:
        blockers = sim.functional_level_blockers()
        if blockers:
            raise Refused("The cluster functional level cannot be updated: " + "; ".join(blockers) + ".", 5977,
                          None, "update-functional-level")
        return get_cluster(inv)  # -WhatIf writes what would be changed: the cluster object, unchanged
    if "Force" not in inv.params:
        raise Terminating(NON_INTERACTIVE)
    sim.raise_functional_level(by=inv.caller)
    return get_cluster(inv)


@cmdlet("Get-ClusterNodeSupportedVersion", "", positional=())
def get_cluster_node_supported_version(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    return [Out([f"{CLUSTER_NS}.ClusterNodeSupportedVersion", "System.Object"],
                {"NodeName": n.name, "ClusterFunctionalLevel": 12 if n.number == "25398" else 11,
                 "ClusterUpgradeVersion": 3 if n.number == "25398" else 1}, to_string=n.name)
            for n in inv.sim.nodes.values()]


def _cluster_refusal(inv: Invocation, refused: Refused) -> Terminating:
    return Terminating(ErrorOut(refused.args[0], f"{inv.command},{command_class(inv.command)}", "InvalidOperation",
                                exception_type=f"{CLUSTER_NS}.ClusterCmdletException",
                                hresult=hresult_of(refused.code)))


@cmdlet("Stop-Cluster", "Name Force Wait", positional=("Name",))
def stop_cluster(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    if "Force" not in inv.params:
        raise Terminating(NON_INTERACTIVE)
    inv.sim.stop_cluster(by=inv.caller)
    return []


@cmdlet("Start-Cluster", "Name IgnorePersistentState Wait", positional=("Name",))
def start_cluster(inv: Invocation) -> list[Out]:
    """Run in a node's session it starts the cluster service there; reaching the other nodes is a second hop
    (its docs: it cannot be run remotely without CredSSP), refused without delegation (knob `second_hop`): an error
    per node not reached [INFER the text], the cluster object still written."""
    unreached = inv.sim.start_cluster(by=inv.caller, on=inv.node)
    for name in unreached:
        inv.errors.append(ErrorOut(f"The cluster service could not be started on node '{name}'. Access is denied.",
                                   f"StartClusterNode,{command_class(inv.command)}", "PermissionDenied", target=name,
                                   exception_type=f"{CLUSTER_NS}.ClusterCmdletException", hresult=-2147024891))
    return [Out([f"{CLUSTER_NS}.Cluster", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
                {"Name": inv.sim.name}, to_string=inv.sim.name)]


def second_hop_denied(inv: Invocation, target: str) -> ErrorOut:
    """What Windows answers a command in a remote session that connects on to another node without delegated
    credentials: the PSRemotingTransportException of a refused connection (access denied)."""
    return ErrorOut(f"[{target}] Connecting to remote server {target} failed with the following error message : "
                    "Access is denied. For more information, see the about_Remote_Troubleshooting Help topic.",
                    "AccessDenied,PSSessionStateBroken", "OpenError", target=target,
                    exception_type="System.Management.Automation.Remoting.PSRemotingTransportException",
                    hresult=-2147024891)


def _csv_name(disk: str) -> str:
    return f"Cluster Virtual Disk ({disk})"


@cmdlet("Get-ClusterSharedVolume", "Name", positional=("Name",))
def get_cluster_shared_volume(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    owner = next((n.name for n in inv.sim.nodes.values() if n.state == NodeState.Up), inv.node)
    return [Out([f"{CLUSTER_NS}.ClusterSharedVolume", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
                {"Name": _csv_name(disk), "State": "Online" if online else "Offline", "OwnerNode": owner},
                to_string=_csv_name(disk)) for disk, online in inv.sim.csv_online.items()]


def _csv_resource(inv: Invocation, online: bool) -> list[Out]:
    require_cluster_node(inv)
    name = str(inv.params.get("Name", ""))
    disk = next((d for d in inv.sim.csv_online if _csv_name(d) == name), None)
    if disk is None:
        raise Terminating(ErrorOut(f"The resource '{name}' was not found.",
                                   f"ClusterObjectNotFound,{command_class(inv.command)}", "ObjectNotFound",
                                   target=name, exception_type=f"{CLUSTER_NS}.ClusterCmdletException"))
    try:
        inv.sim.set_csv(disk, online, by=inv.caller)
    except Refused as refused:
        raise _cluster_refusal(inv, refused) from None
    return [Out([f"{CLUSTER_NS}.ClusterResource", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
                {"Name": name, "State": "Online" if online else "Offline"}, to_string=name)]


@cmdlet("Stop-ClusterResource", "Name Wait IgnoreLocked", positional=("Name",))
def stop_cluster_resource(inv: Invocation) -> list[Out]:
    return _csv_resource(inv, False)


@cmdlet("Start-ClusterResource", "Name Wait IgnoreLocked", positional=("Name",))
def start_cluster_resource(inv: Invocation) -> list[Out]:
    return _csv_resource(inv, True)


# --- Storage ---------------------------------------------------------------------------------------------------
STORAGE_NS = "ROOT/Microsoft/Windows/Storage"


def virtual_disk(disk: VirtualDisk) -> Out:
    return Out(
        cim_types(STORAGE_NS, "MSFT_VirtualDisk"),
        {"FriendlyName": disk.name, "ResiliencySettingName": disk.resiliency, "Size": disk.size,
         "FootprintOnPool": disk.size * 2, "AllocatedSize": disk.size, "NumberOfDataCopies": 2,
         "FaultDomainRedundancy": 1, "PhysicalDiskRedundancy": 1, "IsManualAttach": False,
         "UniqueId": hashlib.md5(disk.name.encode()).hexdigest().upper(),
         "HealthStatus": int(disk.health), "OperationalStatus": [int(s) for s in disk.operational],
         "ProvisioningType": int(ProvisioningType.Fixed)},
        extended={"HealthStatus": disk.health, "OperationalStatus": list(disk.operational),
                  "ProvisioningType": ProvisioningType.Fixed},
        to_string="",
    )


def storage_job(job: StorageJob, sim: SimCluster) -> Out:
    elapsed = max(0.0, (job.ended or sim.now()) - job.started)
    h, rem = divmod(int(elapsed), 3600)
    return Out(
        cim_types(STORAGE_NS, "MSFT_StorageJob"),
        {"Name": job.name, "IsBackgroundTask": True, "ElapsedTime": f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}",
         "JobState": int(job.state), "PercentComplete": job.percent, "BytesProcessed": int(job.bytes_processed),
         "BytesTotal": job.bytes_total, "Description": f"Regenerating {job.disk}",
         "UniqueId": f"{{{id(job):x}}}"},
        extended={"JobState": job.state},
        to_string="",
    )


@cmdlet("Get-VirtualDisk", "FriendlyName UniqueId StoragePool", positional=("FriendlyName",))
def get_virtual_disk(inv: Invocation) -> list[Out]:
    wanted = names_param(inv, "FriendlyName")
    return [virtual_disk(d) for d in inv.sim.disks.values() if wanted is None or d.name in wanted]


@cmdlet("Get-StorageJob", "Name UniqueId JobState StoragePool VirtualDisk", positional=("Name",))
def get_storage_job(inv: Invocation) -> list[Out]:
    return [storage_job(j, inv.sim) for j in inv.sim.jobs]


@cmdlet("Get-StoragePool", "FriendlyName IsPrimordial UniqueId", positional=("FriendlyName",))
def get_storage_pool(inv: Invocation) -> list[Out]:
    sim = inv.sim
    allocated = sum(d.size * 2 for d in sim.disks.values())
    pools = [
        (False, f"S2D on {sim.name}", sim.pool_health, sim.pool_size, allocated, sim.pool_version),
        (True, "Primordial", HealthStatus.Healthy, sim.pool_size, sim.pool_size, 0),
    ]
    primordial = inv.params.get("IsPrimordial")
    out = []
    for is_primordial, name, health, size, used, version in pools:
        if primordial is not None and bool(primordial) != is_primordial:
            continue
        operational = OperationalStatus.OK if health == HealthStatus.Healthy else OperationalStatus.Degraded
        extended: dict[str, Any] = {"HealthStatus": health, "OperationalStatus": operational}
        if sim.knobs.pool_version_form == "text":  # the Storage module's friendly text shadows the CIM number
            extended["Version"] = pool_version_text(version)
        out.append(Out(cim_types(STORAGE_NS, "MSFT_StoragePool"),
                       {"FriendlyName": name, "IsPrimordial": is_primordial, "IsReadOnly": False,
                        "HealthStatus": int(health), "OperationalStatus": int(operational), "Size": size,
                        "AllocatedSize": used, "Version": version},
                       extended=extended, to_string=""))
    return out


# MSFT_StoragePool.Version (UInt16) as the Storage module shows it. 28 = "Windows Server vNext" is the environment
# checker's own comment (reference/domain.md §2); the others are [INFER] (a real pool of 2017 showed
# "Windows Server 2016 RS3"). Only the display depends on them: hci-upgrade reads the number.
POOL_VERSION_TEXT = {24: "Windows Server 2016 RS3", 26: "Windows Server 2019", 27: "Windows Server 2022",
                     28: "Windows Server vNext", 29: "Windows Server 2025"}


def pool_version_text(version: int) -> str:
    return POOL_VERSION_TEXT.get(version, f"Unknown ({version})")


@cmdlet("Update-StoragePool", "FriendlyName UniqueId Name PassThru", positional=("FriendlyName",))
def update_storage_pool(inv: Invocation) -> list[Out]:
    """Irreversible. Prompts unless -Confirm:$false."""
    sim = inv.sim
    name = str(inv.params.get("FriendlyName") or inv.params.get("Name") or "")
    if name != f"S2D on {sim.name}":
        inv.errors.append(ErrorOut(f"No MSFT_StoragePool objects found with property 'FriendlyName' equal to "
                                   f"'{name}'.  Verify the value of the property and retry.",
                                   "CmdletizationQuery_NotFound_FriendlyName,Update-StoragePool", "ObjectNotFound",
                                   target=name, exception_type="Microsoft.PowerShell.Cmdletization.Cim."
                                                               "CimJobException"))
        return []
    if "WhatIf" in inv.params:
        return []
    if inv.params.get("Confirm") is not False:
        raise Terminating(NON_INTERACTIVE)
    try:
        sim.update_pool(by=inv.caller)
    except Refused as refused:
        raise Terminating(ErrorOut(refused.args[0], "StorageWMI 1,Update-StoragePool", "NotSpecified",
                                   target=name, exception_type="Microsoft.Management.Infrastructure.CimException",
                                   hresult=-2146233088)) from None
    return [p for p in get_storage_pool(inv) if not p.props["IsPrimordial"]] if "PassThru" in inv.params else []


# --- the node itself -------------------------------------------------------------------------------------------
CURRENT_VERSION_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"


def path_not_found(inv: Invocation, path: str) -> None:
    """The non-terminating error the registry provider writes for a key that does not exist."""
    inv.errors.append(ErrorOut(f"Cannot find path '{path}' because it does not exist.",
                               f"PathNotFound,Microsoft.PowerShell.Commands.{inv.command.replace('-', '')}Command",
                               "ObjectNotFound", target=path,
                               exception_type="System.Management.Automation.ItemNotFoundException",
                               hresult=-2146233087))


def registry_values(inv: Invocation, path: str) -> dict[str, Any] | None:
    """The values under a registry key the simulator knows, or None when the key does not exist."""
    key = path.rstrip("\\").lower()
    if key == CURRENT_VERSION_KEY.lower():
        node = inv.sim.nodes[inv.node]
        return {"ProductName": "Azure Stack HCI", "DisplayVersion": "23H2" if node.number == "25398" else "22H2",
                "CurrentBuildNumber": node.number, "CurrentBuild": node.number, "UBR": node.ubr,
                "EditionID": "ServerAzureStackHCICor", "InstallationType": "Server Core"}
    if key == AU_KEY.lower():
        spec = _spec(inv)
        return {"AUOptions": 4 if spec.auto_update == "install" else 2, "NoAutoUpdate": int(spec.no_auto_update)}
    if key == SESSION_MANAGER_KEY.lower():
        spec = _spec(inv)
        renames = spec.reboot_pending and spec.reboot_pending_source == "file-rename"
        return {"BootExecute": ["autocheck autochk *"],
                **({"PendingFileRenameOperations": ["\\??\\C:\\Windows\\Temp\\x.tmp", ""]} if renames else {})}
    if key == MARKER_KEY.lower():
        marker = inv.sim.nodes[inv.node].marker
        return dict(marker) if marker else None
    if key == FENCE_KEY.lower():
        fence = inv.sim.nodes[inv.node].fence
        return dict(fence) if fence else None
    for known, names in REGISTRY_KEYS.items():
        if key == known.lower():
            if known.endswith("Parameters") and not _readiness(inv).vid_key:
                return None  # the Vid\Parameters key does not exist until New-Item creates it
            return {k: v for k, v in _readiness(inv).registry.items() if k in names}
    return None


@cmdlet("Get-ItemProperty", "Path Name LiteralPath", positional=("Path", "Name"))
def get_item_property(inv: Invocation) -> list[Out]:
    """-Path is a string[]: an object per key that exists, in order, and a PathNotFound error per key that
    does not."""
    paths = inv.params.get("Path") or inv.params.get("LiteralPath") or ""
    return [out for path in (paths if isinstance(paths, list) else [paths]) for out in _item_property(inv, str(path))]


def _item_property(inv: Invocation, path: str) -> list[Out]:
    values = registry_values(inv, path)
    if values is None:
        path_not_found(inv, path)
        return []
    wanted = inv.params.get("Name")
    if wanted is not None:
        names = [str(n) for n in wanted] if isinstance(wanted, list) else [str(wanted)]
        missing = [n for n in names if n not in values]
        for name in missing:
            hive = path.replace("HKLM:\\", "HKEY_LOCAL_MACHINE\\").rstrip("\\")
            inv.errors.append(ErrorOut(f"Property {name} does not exist at path {hive}.",
                                       "System.Management.Automation.PSArgumentException,"
                                       "Microsoft.PowerShell.Commands.GetItemPropertyCommand", "InvalidArgument",
                                       target=name, exception_type="System.Management.Automation.PSArgumentException",
                                       hresult=-2147024809))
        values = {k: v for k, v in values.items() if k in names}
        if not values:
            return []
    leaf = path.rstrip("\\").rsplit("\\", 1)[-1]
    provider_path = path.replace("HKLM:\\", "HKEY_LOCAL_MACHINE\\")
    return [Out(["System.Management.Automation.PSCustomObject", "System.Object"], {}, extended={
        **values, "PSPath": f"Microsoft.PowerShell.Core\\Registry::{provider_path}", "PSChildName": leaf,
        "PSProvider": "Microsoft.PowerShell.Core\\Registry"})]


@cmdlet("Restart-Computer", "Force ComputerName Wait Timeout")
def restart_computer(inv: Invocation) -> list[Out]:
    if "Force" not in inv.params and any(
            vm.owner == inv.node for vm in inv.sim.vms.values()):
        raise Terminating(ErrorOut(
            f"Failed to restart the computer {inv.node} with the following error message: The system shutdown "
            "cannot be initiated because there are other users logged on to the computer.",
            "RestartcomputerFailed,Microsoft.PowerShell.Commands.RestartComputerCommand", "OperationStopped"))
    inv.sim.restart(inv.node, by=inv.caller)
    return []


TASK_DESCRIPTIONS = {"feature": "hci-upgrade: Windows setup, down-level phase",
                     "cumulative": "hci-upgrade: cumulative update (wusa.exe /quiet /norestart)"}


def scheduled_task(inv: Invocation, name: str) -> Out:
    task = inv.sim.nodes[inv.node].tasks[name]
    return Out(cim_types("Root/Microsoft/Windows/TaskScheduler", "MSFT_ScheduledTask"),
               {"TaskName": name, "TaskPath": "\\", "State": int(task.state),
                "Description": TASK_DESCRIPTIONS[task.kind]},
               extended={"State": task.state}, to_string="")


def _task(inv: Invocation) -> str | None:
    """The name of the task the call names, or None after writing the non-terminating error the ScheduledTasks
    module writes for a task that does not exist (a CIM query that found nothing)."""
    name = str(inv.params.get("TaskName", ""))
    if name in inv.sim.nodes[inv.node].tasks:
        return name
    inv.errors.append(ErrorOut(
        f"No MSFT_ScheduledTask objects found with property 'TaskName' equal to '{name}'.  Verify the value of "
        "the property and retry.", f"CmdletizationQuery_NotFound_TaskName,{inv.command}", "ObjectNotFound",
        target=name, exception_type="Microsoft.PowerShell.Cmdletization.Cim.CimJobException", hresult=-2146233088))
    return None


@cmdlet("Get-ScheduledTask", "TaskName TaskPath", positional=("TaskName",))
def get_scheduled_task(inv: Invocation) -> list[Out]:
    name = _task(inv)
    return [scheduled_task(inv, name)] if name else []


@cmdlet("Start-ScheduledTask", "TaskName TaskPath", positional=("TaskName",))
def start_scheduled_task(inv: Invocation) -> list[Out]:
    name = _task(inv)
    if name:
        inv.sim.start_update(inv.node, name, by=inv.caller)
    return []


@cmdlet("Stop-ScheduledTask", "TaskName TaskPath", positional=("TaskName",))
def stop_scheduled_task(inv: Invocation) -> list[Out]:
    name = _task(inv)
    if name:
        inv.sim.stop_update(inv.node, name, by=inv.caller)
    return []


@cmdlet("Get-ScheduledTaskInfo", "TaskName TaskPath", positional=("TaskName",))
def get_scheduled_task_info(inv: Invocation) -> list[Out]:
    name = _task(inv)
    if name is None:
        return []
    task = inv.sim.nodes[inv.node].tasks[name]
    last_run = inv.sim.clock.datetime_at(task.last_run_time) if task.last_run_time is not None else None
    return [Out(cim_types("Root/Microsoft/Windows/TaskScheduler", "MSFT_TaskDynamicInfo"),
                {"TaskName": name, "TaskPath": "\\", "LastTaskResult": task.last_result,
                 "LastRunTime": last_run.strftime("%Y-%m-%dT%H:%M:%S") if last_run else None,
                 "NumberOfMissedRuns": 0}, to_string="")]


# --- packaged scripts: known by their content, as a real node only knows what it is sent --------------------------
def _script_digest(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


PACKAGED: dict[str, Callable[[Invocation], list[Out]]] = {}


def packaged(filename: str):
    def register(fn: Callable[[Invocation], list[Out]]):
        PACKAGED[_script_digest((SCRIPTS_DIR / filename).read_text())] = fn
        return fn

    return register


def _register_update_task(inv: Invocation, default_task: str, path_parameter: str) -> list[Out]:
    """Either Register-*UpdateTask.ps1: the task registered (a running one left alone), started with -Start."""
    name = str(inv.params.get("TaskName") or default_task)
    with owned(inv):
        inv.sim.register_update(inv.node, name, str(inv.params.get(path_parameter, "")), by=inv.caller)
        if "Start" in inv.params:
            inv.sim.start_update(inv.node, name, by=inv.caller)
    return [scheduled_task(inv, name)]


@packaged("Register-FeatureUpdateTask.ps1")
def register_feature_update_task(inv: Invocation) -> list[Out]:
    return _register_update_task(inv, FEATURE_UPDATE_TASK, "SetupPath")


@packaged("Register-CumulativeUpdateTask.ps1")
def register_cumulative_update_task(inv: Invocation) -> list[Out]:
    return _register_update_task(inv, CUMULATIVE_UPDATE_TASK, "PackagePath")


def invoke_script(sim: SimCluster, node: str, caller: str, text: str, raw: list[tuple[str | None, Any]],
                  ) -> tuple[list[Out], list[ErrorOut]]:
    handler = PACKAGED.get(_script_digest(text))
    if handler is None:
        raise Terminating(ErrorOut("The simulator runs only the scripts packaged with hci-upgrade.",
                                   "ScriptNotPackaged", "PermissionDenied"))
    params = {k: v for k, v in raw if k is not None}
    inv = Invocation(sim, node, caller, params, [], command="Script")
    with sim.lock:
        sim.advance()
        try:
            return handler(inv), inv.errors
        except Refused as refused:
            raise Terminating(cluster_error(refused, Spec(handler, frozenset(), (), "Script"))) from None


@packaged("Get-ClusterHealth.ps1")
def get_cluster_health(inv: Invocation) -> list[Out]:
    """Its four statements, each as the cmdlet alone answers (its errors terminating: the script says Stop)."""
    out: list[Out] = []
    for statement in (("Get-ClusterNode", []), ("Get-VirtualDisk", []), ("Get-StorageJob", []),
                      ("Get-StoragePool", [("IsPrimordial", False)])):
        data, errors = invoke(inv.sim, inv.node, inv.caller, [statement])
        if errors:
            raise Terminating(errors[0])
        out += data
    return out


@packaged("Get-StoragePoolVersion.ps1")
def get_storage_pool_version(inv: Invocation) -> list[Out]:
    """The S2D pool's name and the CIM number behind its friendly Version text."""
    sim = inv.sim
    return [Out(["System.Management.Automation.PSCustomObject", "System.Object"], {}, extended={
        "FriendlyName": f"S2D on {sim.name}", "Version": sim.pool_version,
        "VersionText": pool_version_text(sim.pool_version)})]


@packaged("Test-SecondHop.ps1")
def test_second_hop(inv: Invocation) -> list[Out]:
    """Invoke-Command from this node's session to another: refused without delegation (knob `second_hop`)."""
    target = str(inv.params.get("Name", ""))
    if inv.sim.knobs.second_hop == "denied" and target.lower() != inv.node.lower():
        raise Terminating(second_hop_denied(inv, target))
    return [Out(["System.Management.Automation.PSCustomObject", "System.Object"], {},
                extended={"ComputerName": target})]


@packaged("Invoke-NodeScript.ps1")
def invoke_node_script(inv: Invocation) -> list[Out]:
    with owned(inv):
        inv.sim.run_node_script(inv.node, str(inv.params.get("Path", "")), str(inv.params.get("Phase", "Pre")),
                                by=inv.caller)
    return []


# --- ownership: what every owned script proves in the same call as its action (DESIGN.md invariant 8) ------------
def _owner(inv: Invocation) -> tuple[str, int]:
    return str(inv.params.get("RunId", "")), int(inv.params.get("Fence") or 0)


def _deny(inv: Invocation, error_id: str, why: str) -> Terminating:
    """The refusal of the scripts' ownership prelude (its error id and text), logged as the simulator's own
    event; nothing else is done."""
    run, fence = _owner(inv)
    node = inv.sim.nodes[inv.node]
    inv.sim.fenced_out(node.name, f"run {run} (fence {fence}): {why}", by=inv.caller)
    return _script_error(f"{node.name} is not held by hci-upgrade run {run} (fence {fence}): {why}; nothing was "
                         "done.", error_id, "PermissionDenied", node.name, "script")


def _newer_fence(inv: Invocation) -> str | None:
    run, fence = _owner(inv)
    held = inv.sim.nodes[inv.node].fence
    if held is not None and int(held["Fence"]) > fence:
        return f"a newer run holds it: run {held['RunId']}, fence {held['Fence']}"
    return None


@contextmanager
def owned(inv: Invocation) -> Iterator[None]:
    """The scripts' prelude: refused with FencedOut when the node holds a newer fence than the caller's, with
    NotOurPause under -Marked when the node does not carry the caller's mark; otherwise what the body changes is
    logged as the caller's run and fence."""
    run, fence = _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    marker = inv.sim.nodes[inv.node].marker
    if "Marked" in inv.params and not (marker and marker.get("PausedByRun") == run):
        raise _deny(inv, "NotOurPause", "it does not carry this run's mark")
    with inv.sim.acting_for(run, fence):
        yield


OWNED_COMMANDS = ("Name", "TaskName", "FriendlyName", "StartupType", "Force")


@packaged("Invoke-OwnedCommand.ps1")
def invoke_owned_command(inv: Invocation) -> list[Out]:
    """The prelude, then the one cmdlet, splatted with the parameters bound to the script (-ErrorAction Stop)."""
    command = str(inv.params.get("Command", ""))
    params: list[tuple[str | None, Any]] = [(k, inv.params[k]) for k in OWNED_COMMANDS if k in inv.params]
    if command == "Update-StoragePool":
        params.append(("Confirm", False))
    with owned(inv):
        data, errors = invoke(inv.sim, inv.node, inv.caller, [(command, [*params, ("ErrorAction", "Stop")])])
    if errors:
        raise Terminating(errors[0])
    return data


@packaged("Set-UpgradeOwner.ps1")
def set_upgrade_owner(inv: Invocation) -> list[Out]:
    """The run's fence written on the node (refused when the node holds a newer one); -TakeOver moves a dead run's
    mark to the caller. Returns the fence key and the mark as Get-ItemProperty shows them."""
    run, fence = _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    with inv.sim.acting_for(run, fence):
        inv.sim.claim_fence(inv.node, run, fence, by=inv.caller)
        if inv.params.get("TakeOver"):
            inv.sim.take_over_mark(inv.node, str(inv.params["TakeOver"]), by=inv.caller)
    inv.command = "Get-ItemProperty"
    return [out for key in (FENCE_KEY, MARKER_KEY) if registry_values(inv, key) is not None
            for out in _item_property(inv, key)]


SUSPEND = "suspend-clusternode"


def _script_error(message: str, error_id: str, category: str, target: str, script: str) -> Terminating:
    """What $PSCmdlet.ThrowTerminatingError in a packaged script sends: its own error id and category."""
    return Terminating(ErrorOut(message, error_id, category, target=target,
                                exception_type="System.InvalidOperationException", activity=script))


def _mark_holder(mark: dict[str, str] | None) -> str:
    if not mark:
        return "someone else (no hci-upgrade mark)"
    return f"hci-upgrade run {mark.get('PausedByRun')} ({mark.get('PausedBy')}, {mark.get('PausedAt')})"


@packaged("Suspend-NodeForUpgrade.ps1")
def suspend_node_for_upgrade(inv: Invocation) -> list[Out]:
    sim, name, (run, fence) = inv.sim, str(inv.params.get("Name", "")), _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    inv.command = "Get-ClusterNode"
    require_cluster_node(inv)
    node = _named_node(inv, name)
    ours = node.marker is not None and node.marker.get("PausedByRun") == run
    if not (node.state == NodeState.Up or (node.state == NodeState.Paused and ours)):
        raise _script_error(f"{node.name} is {node.state.name}, paused by {_mark_holder(node.marker)}; hci-upgrade "
                            "does not take over a pause that is not its own.", "NodeNotUp", "ResourceBusy",
                            node.name, "Suspend-NodeForUpgrade.ps1")
    others = [n for n in sim.nodes.values() if n.name != node.name and n.state != NodeState.Up]
    if others and not ours:  # the gate again, in the same call as the pause: nobody can slip in between
        raise _script_error(f"{node.name} is not paused: node {others[0].name} is {others[0].state.name}; one node "
                            "out of service at a time.", "OtherNodeNotUp", "ResourceUnavailable", node.name,
                            "Suspend-NodeForUpgrade.ps1")
    force = "ForceDrain" in inv.params
    if ours and node.drain_status == DrainStatus.InProgress and not force:
        return [cluster_node(sim, node)]  # a drain of ours in progress is only watched
    with sim.acting_for(run, fence):
        sim.claim_fence(node.name, run, fence, by=inv.caller)
        if not ours:
            sim.mark_pause(node.name, {"PausedByRun": run, "PausedBy": inv.caller,
                                       "PausedAt": sim.clock.datetime_at(sim.now()).isoformat(), "Fence": fence},
                           by=inv.caller)
        try:
            node = sim.suspend(node.name, drain=True, force_drain=force, by=inv.caller)
        except Refused as refused:
            if not ours:
                sim.clear_mark(node.name, by=inv.caller)
            raise Terminating(cluster_error(refused, REGISTRY[SUSPEND])) from None
    return [cluster_node(sim, node)]


@packaged("Resume-NodeAfterUpgrade.ps1")
def resume_node_after_upgrade(inv: Invocation) -> list[Out]:
    sim, name, (run, fence) = inv.sim, str(inv.params.get("Name", "")), _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    inv.command = "Get-ClusterNode"
    require_cluster_node(inv)
    node = _named_node(inv, name)
    ours = node.marker is not None and node.marker.get("PausedByRun") == run
    with sim.acting_for(run, fence):
        if node.state == NodeState.Paused:
            if not ours:
                raise _script_error(f"{node.name} is paused, but not by hci-upgrade run {run}; it is left paused.",
                                    "NotOurPause", "PermissionDenied", node.name, "Resume-NodeAfterUpgrade.ps1")
            failback = str(inv.params.get("Failback") or "Immediate")
            node = sim.resume(node.name, failback=failback, by=inv.caller)
        if ours:
            sim.clear_mark(node.name, by=inv.caller)
    return [cluster_node(sim, node)]


def _named_node(inv: Invocation, name: str) -> Node:
    try:
        return inv.sim.node(name)
    except KeyError:
        raise Terminating(ErrorOut(f"The cluster node '{name}' was not found.",
                                   f"ClusterObjectNotFound,{command_class('Get-ClusterNode')}", "ObjectNotFound",
                                   target=name, exception_type=f"{CLUSTER_NS}.ClusterCmdletException")) from None


# --- Hyper-V: the VMs of the node the call runs on -----------------------------------------------------------
HYPERV = "Microsoft.HyperV.PowerShell"


def _vm_out(sim: SimCluster, vm: Any) -> Out:
    from hciupgrade.psenums import VMState

    return Out([f"{HYPERV}.VirtualMachine", f"{HYPERV}.VirtualMachineBase", "System.Object"],
               {"Name": vm.name, "State": VMState[vm.hyperv_state] if vm.hyperv_state else
                VMState.Running if vm.running else VMState.Off, "Version": vm.version,
                "ComputerName": vm.owner, "Generation": 2, "IsClustered": True,
                "MemoryAssigned": int(vm.memory_gb * 1024**3) if vm.running else 0}, to_string=vm.name)


def _local_vms(inv: Invocation) -> list[Any]:
    wanted = names_param(inv)
    vms = [vm for vm in inv.sim.vms.values() if vm.owner == inv.node]
    if wanted is None:
        return vms
    found = [vm for vm in vms if vm.name in wanted]
    for name in set(wanted) - {vm.name for vm in found}:
        inv.errors.append(ErrorOut(f"Hyper-V was unable to find a virtual machine with name \"{name}\".",
                                   f"InvalidParameter,{HYPERV}.Commands.{inv.command.replace('-', '')}Command",
                                   "InvalidArgument", target=name,
                                   exception_type=f"{HYPERV}.VirtualizationException"))
    return found


@cmdlet("Get-VM", "Name ComputerName", positional=("Name",))
def get_vm(inv: Invocation) -> list[Out]:
    return [_vm_out(inv.sim, vm) for vm in _local_vms(inv)]


def _vm_action(inv: Invocation, action: Callable[[str], Any]) -> list[Out]:
    out = []
    for vm in _local_vms(inv):
        try:
            out.append(_vm_out(inv.sim, action(vm.name)))
        except Refused as refused:
            raise Terminating(ErrorOut(refused.args[0], f"OperationFailed,{HYPERV}.Commands."
                                                        f"{inv.command.replace('-', '')}Command",
                                       "NotSpecified", target=vm.name,
                                       exception_type=f"{HYPERV}.VirtualizationException",
                                       hresult=hresult_of(refused.code))) from None
    return out if "Passthru" in inv.params or "PassThru" in inv.params else []


@cmdlet("Get-VMHostSupportedVersion", "Default", positional=())
def get_vm_host_supported_version(inv: Invocation) -> list[Out]:
    """The configuration versions this host supports; -Default: only the one it creates VMs with (what
    Update-VMVersion moves a VM to)."""
    default = inv.sim.default_vm_version(inv.node)
    versions = [default] if "Default" in inv.params else sorted({"9.0", "10.0", default}, key=float)
    return [Out([f"{HYPERV}.VMHostSupportedVersion", "System.Object"],
                {"Name": f"Microsoft Hyper-V configuration version {v}", "Version": v, "IsDefault": v == default},
                to_string=v) for v in versions]


@cmdlet("Stop-VM", "Name Force TurnOff Save Passthru", positional=("Name",))
def stop_vm(inv: Invocation) -> list[Out]:
    """A guest whose console is locked is shut down only with -Force; without it Stop-VM asks, and a remote
    session cannot answer (Msvm_ShutdownComponent.InitiateShutdown: 32781, 'The machine is locked and cannot be
    shut down without the force option')."""
    name = str(inv.params.get("Name", ""))
    vm = inv.sim.vms.get(name)
    if vm is not None and vm.running and vm.locked_console and "Force" not in inv.params:
        raise Terminating(NON_INTERACTIVE)
    return _vm_action(inv, lambda name: inv.sim.stop_vm(name, by=inv.caller))


@cmdlet("Start-VM", "Name Passthru", positional=("Name",))
def start_vm(inv: Invocation) -> list[Out]:
    return _vm_action(inv, lambda name: inv.sim.start_vm(name, by=inv.caller))


@cmdlet("Update-VMVersion", "Name Force Passthru", positional=("Name",))
def update_vm_version(inv: Invocation) -> list[Out]:
    if "Force" not in inv.params and "WhatIf" not in inv.params:
        raise Terminating(NON_INTERACTIVE)
    if "WhatIf" in inv.params:
        return []
    return _vm_action(inv, lambda name: inv.sim.update_vm_version(name, by=inv.caller))


@cmdlet("Get-SRGroup", "Name ComputerName", positional=("Name",))
def get_sr_group(inv: Invocation) -> list[Out]:
    if not inv.sim.knobs.storage_replica:
        return []
    return [Out(cim_types("root/Microsoft/Windows/StorageReplica", "MSFT_WvrReplicationGroup"),
                {"Name": f"rg-{inv.node}", "ComputerName": inv.node, "ReplicationMode": 1,
                 "ReplicationStatus": "ContinuouslyReplicating"}, to_string="")]


@packaged("Invoke-ClusterValidation.ps1")
def invoke_cluster_validation(inv: Invocation) -> list[Out]:
    """Test-Cluster's per-test results, as the packaged script projects them from the validation data XML. It
    reaches every node from this one: without delegation the first other node refuses it (a second hop)."""
    require_cluster_node(inv)
    sim = inv.sim
    others = [n for n in sim.nodes if n != inv.node]
    if others and sim.knobs.second_hop == "denied":
        raise Terminating(second_hop_denied(inv, others[0]))
    inv.sim._log("validation", None, by=inv.caller)
    warnings = set(sim.knobs.validation_warnings)
    rows = []
    for category, tests in VALIDATION_TESTS.items():
        for test in tests:
            if category == "Storage Spaces Direct" and any(n.state != NodeState.Up for n in sim.nodes.values()):
                result = "Failed"
            elif category == "Storage" and any(d.health != HealthStatus.Healthy for d in sim.disks.values()):
                result = "Warning"
            elif category == "Cluster Configuration" and test == "Validate Cluster Functional Level" \
                    and sim.functional_level < 12:
                result = "Warning"
            else:
                result = "Warning" if test in warnings else "Success"
            rows.append(Out(["System.Management.Automation.PSCustomObject", "System.Object"], {},
                            extended={"Category": category, "Test": test, "Result": result}))
    return rows


VALIDATION_TESTS = {
    "Cluster Configuration": ["List Cluster Core Groups", "Validate Cluster Functional Level",
                              "Validate Resource Status", "Validate Quorum Configuration"],
    "Hyper-V Configuration": ["List Hyper-V Virtual Machine Information", "Validate Compatibility of Virtual "
                              "Fibre Channel SANs for Hyper-V"],
    "Inventory": ["List BIOS Information", "List Operating System Information", "List Software Updates"],
    "Network": ["Validate Network Communication", "Validate Windows Firewall Configuration"],
    "Storage Spaces Direct": ["Verify Node and Disk Configuration", "List Storage Pools",
                              "Validate Storage Spaces Persistent Reservation"],
    "System Configuration": ["Validate Active Directory Configuration", "Validate All Drivers Signed",
                             "Validate Same Processor Architecture"],
}


# --- Cluster-Aware Updating, quorum, media ------------------------------------------------------------------------
CAU_NS = "Microsoft.ClusterAwareUpdating"


@cmdlet("Get-CauRun", "ClusterName Credential ShowClusterNodeState WaitForCompletion WaitForStart",
        positional=("ClusterName",))
def get_cau_run(inv: Invocation) -> list[Out]:
    """A RunState value first, then the CauRun when a run exists (reference/domain.md §5.4)."""
    from hciupgrade.psenums import CauRunState

    state = CauRunState[inv.sim.knobs.cau_run_state]
    out: list[Any] = [state]  # an enum value on the output stream, as the real cmdlet writes it
    if state != CauRunState.RunNotInProgress:
        out.append(Out([f"{CAU_NS}.CauRun", "System.Object"],
                       {"RunId": "6f1c2a9e-3d52-4c1b-9a8e-0c7d2b1e4f10", "RunStartTime": "2026-11-20T01:35:39",
                        "CurrentOrchestrator": next(iter(inv.sim.nodes)), "CancelPending": False,
                        "NodeStatusNotifications": [], "NodeResults": []}, to_string=""))
    return out


@cmdlet("Get-ClusterQuorum", "Name", positional=("Name",))
def get_cluster_quorum(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    witness = inv.sim.knobs.witness
    return [Out([f"{CLUSTER_NS}.ClusterQuorumSettings", "System.Object"],
                {"Cluster": inv.sim.name, "QuorumResource": None if witness == "none" else witness,
                 "QuorumType": "Majority"}, to_string=inv.sim.name)]


@cmdlet("Get-WindowsImage", "ImagePath Index Name", positional=())
def get_windows_image(inv: Invocation) -> list[Out]:
    path = str(inv.params.get("ImagePath", ""))
    spec = next(n for n in inv.sim.scenario.cluster.nodes if n.name == inv.node)
    build = spec.media_build or inv.sim.target_build
    return [Out(["Microsoft.Dism.Commands.WimImageInfoObject", "Microsoft.Dism.Commands.ImageInfoObject",
                 "System.Object"],
                {"ImagePath": path, "ImageIndex": int(inv.params.get("Index", 1)),
                 "ImageName": "Azure Stack HCI", "Version": build, "EditionId": "ServerAzureStackHCICor",
                 "InstallationType": "Server Core", "Languages": ["en-US (Default)"], "Architecture": 9},
                to_string="")]



# --- the environment checker and what remediates its findings ---------------------------------------------------
RESULT_TYPE = "Microsoft.EnvironmentReadiness.Client.Models.EnvironmentReadinessTestResult"
CHECKER_MODULE = "AzStackHci.EnvironmentChecker"


def _readiness(inv: Invocation):
    return inv.sim.readiness[inv.node]


@cmdlet("Invoke-AzStackHciUpgradeValidation", "PsSession PassThru OutputPath Include Exclude")
def invoke_upgrade_validation(inv: Invocation) -> list[Out]:
    from hciupgrade.sim.readiness import validation

    if not inv.sim.scenario.readiness.module_installed and inv.node not in inv.sim.checker_installed:
        raise Terminating(ErrorOut(
            "The term 'Invoke-AzStackHciUpgradeValidation' is not recognized as the name of a cmdlet, function, "
            "script file, or operable program.", "CommandNotFoundException", "ObjectNotFound",
            target="Invoke-AzStackHciUpgradeValidation",
            exception_type="System.Management.Automation.CommandNotFoundException"))
    if "PassThru" not in inv.params:
        return []  # without -PassThru the module writes its report files and a console summary only
    return [Out([RESULT_TYPE, "System.Object"], rec, to_string=RESULT_TYPE) for rec in validation(inv.sim, inv.node)]


@cmdlet("Get-Module", "Name ListAvailable All", positional=("Name",))
def get_module(inv: Invocation) -> list[Out]:
    installed = inv.sim.scenario.readiness.module_installed or inv.node in inv.sim.checker_installed
    if str(inv.params.get("Name", "")).lower() != CHECKER_MODULE.lower() or not installed:
        return []
    return [Out(["System.Management.Automation.PSModuleInfo", "System.Object"],
                {"Name": CHECKER_MODULE, "Version": "10.2509.0.2010", "ModuleType": "Script"},
                to_string=CHECKER_MODULE)]


@cmdlet("Install-Module", "Name AllowClobber Force Scope Repository RequiredVersion", positional=("Name",))
def install_module(inv: Invocation) -> list[Out]:
    if str(inv.params.get("Name", "")).lower() != CHECKER_MODULE.lower():
        raise Terminating(ErrorOut(f"No match was found for the specified search criteria and module name "
                                   f"'{inv.params.get('Name')}'.", "NoMatchFoundForCriteria,Install-Module",
                                   "ObjectNotFound"))
    inv.sim.checker_installed.add(inv.node)
    inv.sim._log("module_installed", inv.node, module=CHECKER_MODULE, by=inv.caller)
    return []


NO_RESTART_FEATURES = {"NetworkATC", "GPMC", "RSAT-AD-Powershell", "RSAT-AD-AdminCenter", "RSAT-Hyper-V-Tools"}


def _feature_result(names: list[str], restart: bool) -> Out:
    return Out(["Microsoft.Windows.ServerManager.Commands.FeatureOperationResult", "System.Object"],
               {"Success": True, "RestartNeeded": "Yes" if restart else "No",
                "FeatureResult": names, "ExitCode": "SuccessRestartRequired" if restart else "Success"},
               to_string="")


@cmdlet("Install-WindowsFeature", "Name IncludeAllSubFeature IncludeManagementTools Restart", positional=("Name",))
def install_windows_feature(inv: Invocation) -> list[Out]:
    state = _readiness(inv)
    names = names_param(inv) or []
    added = [n for n in names if n in state.missing_features and n not in state.pending_features]
    now = [n for n in added if n in NO_RESTART_FEATURES]
    state.missing_features[:] = [f for f in state.missing_features if f not in now]
    state.pending_features += [n for n in added if n not in now]  # InstallPending until the next restart
    if added:
        inv.sim._log("features_installed", inv.node, features=now, pending=[n for n in added if n not in now],
                     by=inv.caller)
    return [_feature_result(added, restart=bool(state.pending_features))]


@cmdlet("Suspend-BitLocker", "MountPoint RebootCount", positional=("MountPoint",))
def suspend_bitlocker(inv: Invocation) -> list[Out]:
    state = _readiness(inv)
    if state.bitlocker_protection == "On":
        state.bitlocker_protection = "Off"
        inv.sim._log("bitlocker", inv.node, status="Suspended", reboot_count=inv.params.get("RebootCount", 1),
                     by=inv.caller)
    return [_bitlocker_volume(inv, state.bitlocker_protection)]


@cmdlet("Resume-BitLocker", "MountPoint", positional=("MountPoint",))
def resume_bitlocker(inv: Invocation) -> list[Out]:
    state = _readiness(inv)
    if state.bitlocker_protection == "Off":
        state.bitlocker_protection = "On"
        inv.sim._log("bitlocker", inv.node, status="Resumed", by=inv.caller)
    return [_bitlocker_volume(inv, state.bitlocker_protection)]


@cmdlet("Get-BitLockerVolume", "MountPoint", positional=("MountPoint",))
def get_bitlocker_volume(inv: Invocation) -> list[Out]:
    state = _readiness(inv)
    return [] if state.bitlocker_protection == "None" else [_bitlocker_volume(inv, state.bitlocker_protection)]


def _bitlocker_volume(inv: Invocation, protection: str) -> Out:
    return Out(["Microsoft.BitLocker.Structures.BitLockerVolume", "System.Object"],
               {"ComputerName": inv.node, "MountPoint": "C:", "VolumeType": "OperatingSystem",
                "VolumeStatus": "FullyEncrypted", "ProtectionStatus": protection if protection != "None" else "Off",
                "EncryptionMethod": "XtsAes128", "LockStatus": "Unlocked", "EncryptionPercentage": 100,
                "KeyProtector": ["Tpm", "RecoveryPassword"]}, to_string="C:")


REGISTRY_KEYS = {r"HKLM:\SYSTEM\CurrentControlSet\Control\FileSystem": {"RefsEnableMetadataValidation"},
                 r"HKLM:\SYSTEM\CurrentControlSet\Services\Vid\Parameters": {"SkipSmallLocalAllocations"}}


def _key(path: str) -> str | None:
    for key in REGISTRY_KEYS:
        if key.lower() == path.rstrip("\\").lower():
            return key
    return None


@cmdlet("Set-ItemProperty", "Path Name Value Type Force", positional=("Path", "Name", "Value"))
def set_item_property(inv: Invocation) -> list[Out]:
    path = str(inv.params.get("Path", ""))
    key = _key(path)
    if key is None or registry_values(inv, path) is None:
        path_not_found(inv, path)
        return []
    name = str(inv.params.get("Name"))
    _readiness(inv).registry[name] = int(inv.params.get("Value", 0))
    inv.sim._log("registry", inv.node, path=key, name=name, value=int(inv.params.get("Value", 0)), by=inv.caller)
    return []


@cmdlet("New-Item", "Path ItemType Force Name", positional=("Path",))
def new_item(inv: Invocation) -> list[Out]:
    key = _key(str(inv.params.get("Path", "")))
    if key is None:
        raise Terminating(ErrorOut("The simulator creates only the registry keys of the upgrade procedure.",
                                   "NotSupported,Microsoft.PowerShell.Commands.NewItemCommand", "NotImplemented"))
    state = _readiness(inv)
    if state.vid_key:
        inv.errors.append(ErrorOut("A key at this path already exists.",
                                   "System.IO.IOException,Microsoft.PowerShell.Commands.NewItemCommand",
                                   "ResourceExists", target=key, exception_type="System.IO.IOException"))
        return []
    state.vid_key = True
    inv.sim._log("registry", inv.node, path=key, created=True, by=inv.caller)
    return [Out(["Microsoft.Win32.RegistryKey", "System.Object"], {"Name": key}, to_string=key)]


@cmdlet("Test-Path", "Path LiteralPath", positional=("Path",))
def test_path(inv: Invocation) -> list[Out]:
    """-Path is a string[]: a bool per path, in order."""
    paths = inv.params.get("Path") or inv.params.get("LiteralPath") or ""
    return [_exists(inv, str(p)) for p in (paths if isinstance(paths, list) else [paths])]  # type: ignore[misc]


def _exists(inv: Invocation, path: str) -> bool:
    spec = _spec(inv)
    if path.lower().endswith("vid\\parameters"):
        return _readiness(inv).vid_key
    if path.lower() in PENDING_KEYS:
        return spec.reboot_pending and PENDING_KEYS[path.lower()] == spec.reboot_pending_source
    if path.lower().endswith(".msu"):
        return not spec.package_missing
    return True


REBOOT_PENDING_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending"
WU_REBOOT_REQUIRED_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired"
SESSION_MANAGER_KEY = r"HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager"
PENDING_KEYS = {REBOOT_PENDING_KEY.lower(): "cbs", WU_REBOOT_REQUIRED_KEY.lower(): "windows-update"}
AU_KEY = r"HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU"


def _spec(inv: Invocation) -> Any:
    return next(n for n in inv.sim.scenario.cluster.nodes if n.name == inv.node)


# The "Remote Shutdown" group: its indirect string (reference/domain.md §5) and its display name per language
# (en-US as CAU's docs name it; de-DE [INFER] the localised name)
REMOTE_SHUTDOWN_GROUP = "@firewallapi.dll,-36751"
REMOTE_SHUTDOWN_DISPLAY = {"en-US": "Remote Shutdown", "de-DE": "Herunterfahren des Remotecomputers"}


@cmdlet("Get-NetFirewallRule", "DisplayGroup Group Name DisplayName Enabled", positional=("Name",))
def get_net_firewall_rule(inv: Invocation) -> list[Out]:
    """The rules of a group, found by -Group (the indirect string, the same in every language) or -DisplayGroup
    (the localised name: 'Remote Shutdown' finds nothing on a German node)."""
    display = REMOTE_SHUTDOWN_DISPLAY[inv.sim.knobs.display_language]
    if str(inv.params.get("Group", "")) != REMOTE_SHUTDOWN_GROUP and \
            str(inv.params.get("DisplayGroup", "")) != display:
        return []
    enabled = "True" if _spec(inv).remote_shutdown_rule else "False"
    return [Out(cim_types("root/StandardCimv2", "MSFT_NetFirewallRule"),
                {"Name": name, "DisplayName": name, "DisplayGroup": display, "Group": REMOTE_SHUTDOWN_GROUP,
                 "Enabled": enabled, "Direction": 1}, to_string="")
            for name in ("WMI-RemoteShutdown-In-TCP", "WMI-RemoteShutdown-In-TCP-NoScope")]


@cmdlet("Get-FileHash", "Path LiteralPath Algorithm", positional=("Path",))
def get_file_hash(inv: Invocation) -> list[Out]:
    path = str(inv.params.get("Path") or inv.params.get("LiteralPath") or "")
    spec = _spec(inv)
    if spec.package_missing:
        # Windows PowerShell 5.1 (what a node runs): Get-FileHash is a script function of
        # Microsoft.PowerShell.Utility.psm1 that resolves its path with Resolve-Path, so the error is Resolve-Path's
        # [INFER from that module's source]; PowerShell 7's compiled cmdlet writes FileNotFound instead
        inv.errors.append(ErrorOut(f"Cannot find path '{path}' because it does not exist.",
                                   "PathNotFound,Microsoft.PowerShell.Commands.ResolvePathCommand", "ObjectNotFound",
                                   target=path, exception_type="System.Management.Automation.ItemNotFoundException"))
        return []
    content = spec.package_build or inv.sim.lcu_build
    return [Out(["Microsoft.Powershell.Utility.FileHash", "System.Object"],
                {"Algorithm": "SHA256", "Hash": hashlib.sha256(content.encode()).hexdigest().upper(), "Path": path},
                to_string="")]


def no_such_service(inv: Invocation, name: str) -> None:
    command = inv.command.replace("-", "")
    inv.errors.append(ErrorOut(f"Cannot find any service with service name '{name}'.",
                               f"NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.{command}Command",
                               "ObjectNotFound", target=name,
                               exception_type="Microsoft.PowerShell.Commands.ServiceCommandException"))


KNOWN_SERVICES = {"NetworkATC", "ClusSvc", "WinRM", "TrustedInstaller", "wuauserv"}


@cmdlet("Start-Service", "Name PassThru", positional=("Name",))
def start_service(inv: Invocation) -> list[Out]:
    state = _readiness(inv)
    name = str(inv.params.get("Name"))
    if name.lower() not in {s.lower() for s in KNOWN_SERVICES}:
        no_such_service(inv, name)
        return []
    if name.lower() == "clussvc":
        try:
            inv.sim.start_node_service(inv.node, by=inv.caller)
        except Refused as refused:  # Start-Service writes it and goes on; -ErrorAction Stop makes it terminating
            inv.errors.append(ErrorOut(refused.args[0], "CouldNotStartService,Microsoft.PowerShell.Commands."
                                       "StartServiceCommand", "OpenError", target="ClusSvc",
                                       exception_type="Microsoft.PowerShell.Commands.ServiceCommandException"))
        return []
    if name.lower() == "networkatc":
        if "NetworkATC" in state.missing_features:
            no_such_service(inv, "NetworkATC")
            return []
        if state.network_atc_service != "Running":
            state.network_atc_service = "Running"
            inv.sim._log("service", inv.node, name="NetworkATC", status="Running", by=inv.caller)
    return []


@cmdlet("Set-Service", "Name StartupType", positional=("Name",))
def set_service(inv: Invocation) -> list[Out]:
    name = str(inv.params.get("Name"))
    if name.lower() not in {s.lower() for s in KNOWN_SERVICES}:
        no_such_service(inv, name)
        return []
    if name.lower() == "clussvc" and inv.params.get("StartupType") is not None:
        inv.sim.set_cluster_service(inv.node, str(inv.params["StartupType"]), by=inv.caller)
    return []
