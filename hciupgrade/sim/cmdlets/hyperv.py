"""Hyper-V: the VMs of the node the call runs on, Storage Replica groups, and cluster validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hciupgrade.psenums import (
    HealthStatus,
    NodeState,
)
from hciupgrade.sim.cluster import (
    Refused,
    SimCluster,
)
from hciupgrade.sim.cmdlets.binding import (
    ErrorOut,
    Invocation,
    Out,
    Terminating,
    cim_types,
    cmdlet,
    hresult_of,
    names_param,
    require_cluster_node,
)
from hciupgrade.sim.cmdlets.failover import NON_INTERACTIVE, second_hop_denied
from hciupgrade.sim.cmdlets.scripts import packaged

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
    inv.sim.record_validation(by=inv.caller)
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


