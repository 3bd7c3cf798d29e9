"""The node itself: its registry values, restart and scheduled tasks."""

from __future__ import annotations

from typing import Any

from hciupgrade.sim.cluster import (
    FENCE_KEY,
    MARKER_KEY,
)
from hciupgrade.sim.cmdlets.binding import ErrorOut, Invocation, Out, Terminating, cim_types, cmdlet


# --- the node itself -------------------------------------------------------------------------------------------
def _readiness(inv: Invocation):
    return inv.sim.readiness[inv.node]

REGISTRY_KEYS = {r"HKLM:\SYSTEM\CurrentControlSet\Control\FileSystem": {"RefsEnableMetadataValidation"},
                 r"HKLM:\SYSTEM\CurrentControlSet\Services\Vid\Parameters": {"SkipSmallLocalAllocations"}}

def _key(path: str) -> str | None:
    for key in REGISTRY_KEYS:
        if key.lower() == path.rstrip("\\").lower():
            return key
    return None

REBOOT_PENDING_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending"

WU_REBOOT_REQUIRED_KEY = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired"

SESSION_MANAGER_KEY = r"HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager"

PENDING_KEYS = {REBOOT_PENDING_KEY.lower(): "cbs", WU_REBOOT_REQUIRED_KEY.lower(): "windows-update"}

AU_KEY = r"HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU"

def _spec(inv: Invocation) -> Any:
    return next(n for n in inv.sim.scenario.cluster.nodes if n.name == inv.node)


DISPLAY_VERSIONS = {"20349": "22H2", "25398": "23H2", "26100": "24H2"}  # reference/domain.md §4.2
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
        return {"ProductName": "Azure Stack HCI", "DisplayVersion": DISPLAY_VERSIONS.get(node.number, "22H2"),
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


