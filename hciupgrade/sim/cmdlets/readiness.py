"""The environment checker and what remediates its findings: modules, Windows features, BitLocker, the
registry values and keys of the procedure, pending restarts, firewall rules, file hashes and services."""

from __future__ import annotations

import hashlib

from hciupgrade.sim.cluster import (
    Refused,
)
from hciupgrade.sim.cmdlets.binding import ErrorOut, Invocation, Out, Terminating, cim_types, cmdlet, names_param
from hciupgrade.sim.cmdlets.node import (
    PENDING_KEYS,
    _key,
    _readiness,
    _spec,
    path_not_found,
    registry_values,
)

# --- the environment checker and what remediates its findings ---------------------------------------------------
RESULT_TYPE = "Microsoft.EnvironmentReadiness.Client.Models.EnvironmentReadinessTestResult"
CHECKER_MODULE = "AzStackHci.EnvironmentChecker"




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
    # AKS on HCI's module while it is installed (reference/domain.md §1.0 P3: Uninstall-AksHci, then
    # Uninstall-Module AksHci); [INFER] its version number
    if str(inv.params.get("Name", "")).lower() == "akshci":
        if _readiness(inv).akshci_state == "NotInstalled":
            return []
        return [Out(["System.Management.Automation.PSModuleInfo", "System.Object"],
                    {"Name": "AksHci", "Version": "1.0.24.11029", "ModuleType": "Script"}, to_string="AksHci")]
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
    inv.sim.install_checker_module(inv.node, CHECKER_MODULE, by=inv.caller)
    return []


NO_RESTART_FEATURES = {"NetworkATC", "GPMC", "RSAT-AD-Powershell", "RSAT-AD-AdminCenter", "RSAT-Hyper-V-Tools"}


def _feature_result(names: list[str], restart: bool) -> Out:
    return Out(["Microsoft.Windows.ServerManager.Commands.FeatureOperationResult", "System.Object"],
               {"Success": True, "RestartNeeded": "Yes" if restart else "No",
                "FeatureResult": names, "ExitCode": "SuccessRestartRequired" if restart else "Success"},
               to_string="")


@cmdlet("Install-WindowsFeature", "Name IncludeAllSubFeature IncludeManagementTools Restart", positional=("Name",))
def install_windows_feature(inv: Invocation) -> list[Out]:
    added, pending = inv.sim.install_features(inv.node, names_param(inv) or [], no_restart=NO_RESTART_FEATURES,
                                              by=inv.caller)
    return [_feature_result(added, restart=pending)]


@cmdlet("Suspend-BitLocker", "MountPoint RebootCount", positional=("MountPoint",))
def suspend_bitlocker(inv: Invocation) -> list[Out]:
    protection = inv.sim.set_bitlocker(inv.node, "Off", reboot_count=inv.params.get("RebootCount", 1),
                                       by=inv.caller)
    return [_bitlocker_volume(inv, protection)]


@cmdlet("Resume-BitLocker", "MountPoint", positional=("MountPoint",))
def resume_bitlocker(inv: Invocation) -> list[Out]:
    return [_bitlocker_volume(inv, inv.sim.set_bitlocker(inv.node, "On", by=inv.caller))]


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






@cmdlet("Set-ItemProperty", "Path Name Value Type Force", positional=("Path", "Name", "Value"))
def set_item_property(inv: Invocation) -> list[Out]:
    path = str(inv.params.get("Path", ""))
    key = _key(path)
    if key is None or registry_values(inv, path) is None:
        path_not_found(inv, path)
        return []
    name = str(inv.params.get("Name"))
    inv.sim.set_registry_value(inv.node, key, name, int(inv.params.get("Value", 0)), by=inv.caller)
    return []


@cmdlet("New-Item", "Path ItemType Force Name", positional=("Path",))
def new_item(inv: Invocation) -> list[Out]:
    key = _key(str(inv.params.get("Path", "")))
    if key is None:
        raise Terminating(ErrorOut("The simulator creates only the registry keys of the upgrade procedure.",
                                   "NotSupported,Microsoft.PowerShell.Commands.NewItemCommand", "NotImplemented"))
    if not inv.sim.create_vid_key(inv.node, key, by=inv.caller):
        inv.errors.append(ErrorOut("A key at this path already exists.",
                                   "System.IO.IOException,Microsoft.PowerShell.Commands.NewItemCommand",
                                   "ResourceExists", target=key, exception_type="System.IO.IOException"))
        return []
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
        inv.sim.start_network_atc(inv.node, by=inv.caller)
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


@cmdlet("Get-NetAdapter", "Name Physical InterfaceDescription IncludeHidden", positional=("Name",))
def get_net_adapter(inv: Invocation) -> list[Out]:
    """The node's two physical ports (MSFT_NetAdapter, ROOT/StandardCimv2: Name, InterfaceDescription,
    DriverProvider, DriverVersionString, DriverInformation, as Get-NetAdapter shows them), with the driver the 24H2
    path compares to the inbox one (upgrade-to-24h2-powershell.md@05ff0df4's table). [INFER] the adapter names
    and descriptions, and that an NVIDIA ConnectX reports the Mellanox provider."""
    spec = _spec(inv)
    description = {"Intel": "Intel(R) Ethernet Controller E810-XXV", "Mellanox": "Mellanox ConnectX-6 Dx Adapter",
                   "Broadcom": "Broadcom NetXtreme E-Series Advanced Dual-port 25Gb"}[spec.nic_vendor]
    return [Out(cim_types("ROOT/StandardCimv2", "MSFT_NetAdapter"),
                {"Name": f"ethernet {i}" if i else "ethernet", "InterfaceDescription": f"{description} #{i + 1}",
                 "DriverProvider": spec.nic_vendor, "DriverVersionString": spec.nic_driver,
                 "DriverInformation": f"Driver Date 2024-05-10 Version {spec.nic_driver} NDIS 6.85",
                 "Status": "Up", "HardwareInterface": True, "Virtual": False}, to_string=f"ethernet {i}")
            for i in range(2)]
