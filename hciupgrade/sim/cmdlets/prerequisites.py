"""Get-UpgradePrerequisites.ps1: the preflight's reads of one node in one call. Each read is its cmdlet's own
handler, called as the script calls it (SilentlyContinue where the script says so, Stop inside its try/catch), and
reduced to plain values as the script reduces them (real remoting flattens nested objects beyond depth 1 into
strings: reference/remoting.md, traps, point 3; psrpcore would carry them whole, so the fake must not)."""

from __future__ import annotations

from typing import Any

from hciupgrade.sim.cmdlets.binding import Invocation, Out, invoke
from hciupgrade.sim.cmdlets.scripts import packaged, statement_or_error

CURRENT_VERSION = r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"
RESTART_FLAGS = [r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
                 r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired"]
SESSION_MANAGER = r"HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager"
AU_POLICY = r"HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU"
QUIET = ("ErrorAction", "SilentlyContinue")
STOP = ("ErrorAction", "Stop")


def _props(out: Out) -> dict[str, Any]:
    return {**out.props, **out.extended}


@packaged("Get-UpgradePrerequisites.ps1")
def get_upgrade_prerequisites(inv: Invocation) -> list[Out]:
    def read(name: str, *params: tuple[str, Any]) -> tuple[list[Out], str | None]:
        """A statement's objects, or the message of the error that ended it (the script's try/catch)."""
        data, error = statement_or_error(inv, name, list(params))
        return data, error.error.message if error is not None else None

    version = invoke(inv.sim, inv.node, inv.caller, [("Get-ItemProperty", [("Path", CURRENT_VERSION)])])[0]
    rules, _ = read("Get-NetFirewallRule", ("Group", "@firewallapi.dll,-36751"), QUIET)
    flagged, _ = read("Test-Path", ("Path", RESTART_FLAGS))
    renames, _ = read("Get-ItemProperty", ("Path", SESSION_MANAGER), ("Name", "PendingFileRenameOperations"), QUIET)
    au, _ = read("Get-ItemProperty", ("Path", AU_POLICY), QUIET)
    paths, names = _strings(inv.params.get("RegistryPath")), _strings(inv.params.get("RegistryName"))
    values = []
    for path, name in zip(paths, names, strict=False):
        found, _ = read("Get-ItemProperty", ("Path", path), ("Name", name), QUIET)
        values.append(_props(found[0]).get(name) if found else None)
    media = media_error = package = package_error = None
    if inv.params.get("SetupPath"):
        image = str(inv.params["SetupPath"]).rstrip("\\") + "\\sources\\install.wim"
        found, media_error = read("Get-WindowsImage", ("ImagePath", image), ("Index", 1), STOP)
        media = str(_props(found[0])["Version"]) if found else None
    if inv.params.get("PackagePath"):
        found, package_error = read("Get-FileHash", ("Path", str(inv.params["PackagePath"])), ("Algorithm", "SHA256"),
                                    STOP)
        package = str(_props(found[0])["Hash"]) if found else None
    nics = read("Get-NetAdapter", ("Physical", True))[0] if "Adapters" in inv.params else []
    au_props = _props(au[0]) if au else None
    renamed = _props(renames[0]).get("PendingFileRenameOperations") if renames else None
    task = inv.params.get("TaskName")
    found = read("Get-ScheduledTask", ("TaskName", task), QUIET)[0] if task else []
    if found:
        found += invoke(inv.sim, inv.node, inv.caller, [("Get-ScheduledTaskInfo", [("TaskName", task), STOP])])[0]
    return version + [Out(["HciUpgrade.Prerequisites", "System.Management.Automation.PSCustomObject", "System.Object"],
                          {}, extended={
        "FirewallRulesEnabled": [str(_props(r)["Enabled"]) for r in rules],
        "RestartFlagged": [bool(f) for f in flagged],
        "PendingFileRenames": bool(renamed),
        "NoAutoUpdate": None if au_props is None else _text(au_props.get("NoAutoUpdate")),
        "AUOptions": None if au_props is None else _text(au_props.get("AUOptions")),
        "AksHci": bool(read("Get-Module", ("Name", "AksHci"), ("ListAvailable", True))[0]),
        "RegistryValues": values,
        "MediaVersion": media, "MediaError": media_error, "PackageHash": package, "PackageError": package_error,
        "AdapterNames": [str(_props(n)["Name"]) for n in nics],
        "AdapterDriverProviders": [str(_props(n)["DriverProvider"]) for n in nics],
        "AdapterDriverVersions": [str(_props(n)["DriverVersionString"]) for n in nics],
    })] + found


def _strings(value: Any) -> list[str]:
    return [] if value is None else [str(v) for v in (value if isinstance(value, list) else [value])]


def _text(value: Any) -> str:
    """[string]$null is the empty string in PowerShell."""
    return "" if value is None else str(value)
