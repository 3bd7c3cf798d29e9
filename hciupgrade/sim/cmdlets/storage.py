"""Storage: virtual disks, storage jobs and the pool, as CIM instances (the raw number adapted, the enum
name extended, as the Storage module's type data does)."""

from __future__ import annotations

import hashlib
from typing import Any

from hciupgrade.psenums import (
    HealthStatus,
    OperationalStatus,
    ProvisioningType,
)
from hciupgrade.sim.cluster import (
    Refused,
    SimCluster,
    StorageJob,
    VirtualDisk,
)
from hciupgrade.sim.cmdlets.binding import ErrorOut, Invocation, Out, Terminating, cim_types, cmdlet, names_param
from hciupgrade.sim.cmdlets.failover import NON_INTERACTIVE

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


