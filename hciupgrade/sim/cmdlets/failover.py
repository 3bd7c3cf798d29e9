"""FailoverClusters: nodes, groups, the cluster, its functional level, shared volumes and resources; and
Cluster-Aware Updating's run state, the quorum and the setup media."""

from __future__ import annotations

from hciupgrade.psenums import (
    FailbackType,
    GroupState,
    GroupType,
    NodeState,
    parse,
)
from hciupgrade.sim.cluster import Node, Refused
from hciupgrade.sim.cmdlets.binding import (
    CLUSTER_NS,
    SWITCH,
    ErrorOut,
    Invocation,
    Out,
    Terminating,
    cluster_node,
    cmdlet,
    command_class,
    hresult_of,
    names_param,
    require_cluster_node,
    select_nodes,
)


# --- FailoverClusters ------------------------------------------------------------------------------------------
@cmdlet("Get-ClusterNode", "Name", positional=("Name",), command_class="Get-ClusterNode")
def get_cluster_node(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    return [cluster_node(inv.sim, n) for n in select_nodes(inv)]


def _cluster_node_named(inv: Invocation, name: str, command: str) -> Node:
    try:
        return inv.sim.node(name)
    except KeyError:
        raise Terminating(ErrorOut(f"The cluster node '{name}' was not found.",
                                   f"ClusterObjectNotFound,{CLUSTER_NS}.{command}", "ObjectNotFound",
                                   target=name)) from None


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
        node = _cluster_node_named(inv, name, "SuspendClusterNodeCommand")
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
        node = _cluster_node_named(inv, name, "ResumeClusterNodeCommand")
        out.append(cluster_node(inv.sim, inv.sim.resume(node.name, failback=failback_name, by=inv.caller)))
    return out


@cmdlet("Get-ClusterGroup", "Name", positional=("Name",))
def get_cluster_group(inv: Invocation) -> list[Out]:
    require_cluster_node(inv)
    sim = inv.sim
    owners = {o.props["Name"] for o in inv.input} if inv.input else None
    core = next((n.name for n in sim.nodes.values() if n.state == NodeState.Up), inv.node)
    groups = [("Cluster Group", core, GroupType.ClusterGroup, GroupState.Online),
              ("Available Storage", core, GroupType.AvailableStorage, GroupState.Offline)]
    if sim.cloud_management:
        groups.append(("Cloud Management", core, GroupType.Unknown, GroupState.Online))
    groups += [(vm.name, vm.owner, GroupType.VirtualMachine, GroupState[vm.state]) for vm in sim.vms.values()]
    wanted = names_param(inv)
    out = []
    for name, owner, gtype, state in groups:
        if owners is not None and owner not in owners:
            continue
        if wanted is not None and name not in wanted:
            continue
        out.append(_group_out(inv, name, owner, gtype, state))
    return out


def _group_out(inv: Invocation, name: str, owner: str, gtype: GroupType, state: GroupState) -> Out:
    return Out([f"{CLUSTER_NS}.ClusterGroup", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
               {"Name": name, "OwnerNode": owner, "State": state, "GroupType": gtype, "Priority": 2000,
                "IsCoreGroup": gtype != GroupType.VirtualMachine, "Cluster": inv.sim.name}, to_string=name)


def _no_group(name: str, command: str) -> Terminating:
    """The failover cluster cmdlets' answer for a group that does not exist [UNVERIFIED exact text]."""
    return Terminating(ErrorOut(f"The cluster group '{name}' could not be found.",
                                f"ClusterObjectNotFound,Microsoft.FailoverClusters.PowerShell.{command}",
                                "ObjectNotFound", target=name, hresult=hresult_of(5013)))


@cmdlet("Start-ClusterGroup", "Name Wait IgnoreLocked", positional=("Name",))
def start_cluster_group(inv: Invocation) -> list[Out]:
    """A VM role brought online wherever it is (FailoverClusters' Start-ClusterGroup, reference/domain.md §3.4 for
    the group objects; the simulator starts VM groups). Its refusal's text is the cluster's [UNVERIFIED]."""
    require_cluster_node(inv)
    name = str(inv.params.get("Name", ""))
    vm = inv.sim.vms.get(name)
    if vm is None:
        raise _no_group(name, "StartClusterGroupCommand")
    try:
        inv.sim.start_vm(name, by=inv.caller)
    except Refused as refused:
        raise _cluster_refusal(inv, refused) from None
    return [_group_out(inv, vm.name, vm.owner, GroupType.VirtualMachine, GroupState[vm.state])]


@cmdlet("Remove-ClusterGroup", "Name RemoveResources Force", positional=("Name",))
def remove_cluster_group(inv: Invocation) -> list[Out]:
    """The 24H2 path's clean-up of the 'Cloud Management' group (reference/domain.md §3.4). [UNVERIFIED] whether
    Remove-ClusterGroup asks for confirmation: the harsher side, it does, and a remote session cannot answer, so
    only -Force removes it. The simulator removes that group only."""
    require_cluster_node(inv)
    if "Force" not in inv.params:
        raise Terminating(NON_INTERACTIVE)
    name = str(inv.params.get("Name", ""))
    if name != "Cloud Management" or not inv.sim.remove_cloud_management(by=inv.caller):
        raise _no_group(name, "RemoveClusterGroupCommand")
    return []


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
                {"NodeName": n.name, "ClusterFunctionalLevel": 12 if n.number == inv.sim.target_number else 11,
                 "ClusterUpgradeVersion": 3 if n.number == inv.sim.target_number else 1}, to_string=n.name)
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


# --- quorum, media (CAU: cmdlets/cau.py) ----------------------------------------------------------------------
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



