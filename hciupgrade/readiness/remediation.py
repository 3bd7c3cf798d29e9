"""What to do about each failed check: remote remediation steps (each opt-in, idempotent, safe) and, for what
cannot be fixed remotely, the exact guidance with the numbers behind it (reference/domain.md §1.1, §2.1, §6.3)."""

from __future__ import annotations

from dataclasses import dataclass

from hciupgrade.cluster import ClusterClient
from hciupgrade.remote import SWITCH, Cmdlet, CmdletFailed

GB = 1024**3
FILESYSTEM_KEY = r"HKLM:\SYSTEM\CurrentControlSet\Control\FileSystem"
VID_KEY = r"HKLM:\SYSTEM\CurrentControlSet\Services\Vid\Parameters"

# check name (prefix) -> (remote step, or None) and the guidance an operator reads
GUIDANCE: dict[str, tuple[str | None, str]] = {
    "AzStackHci_Upgrade_Windows_OS_Version": (None, "Finish the OS upgrade and install the target release's latest "
        "LCU on every node (hci-upgrade finish, or CAU with Microsoft.WindowsUpdatePlugin): the current module wants "
        "10.0.25398.1904 or later on 23H2, 10.0.26100.32814 or later on 24H2, the same on all nodes."),
    "AzStackHci_Upgrade_RequiredWindowsVersionForUpgrade": (None, "Install the target release's latest LCU on "
        "every node (23H2: 10.0.25398.1904 or later; 24H2: 10.0.26100.32814 or later; the same everywhere)."),
    "AzStackHci_Required_Windows_Features": ("features", "Install the missing roles with Install-WindowsFeature "
        "-IncludeAllSubFeature -IncludeManagementTools; some need a restart, which the rolling engine does one "
        "node at a time (R1)."),
    "AzStackHci_Upgrade_RequiredWindowsFeature": ("features", "As above: install the missing Windows features (R1)."),
    "AzStackHci_Upgrade_Test_NetworkATC": ("network-atc", "Install and start Network ATC, then add the management "
        "(and, with more than one node, storage) intents: install-enable-network-atc (1.4.1)."),
    "AzStackHci_Upgrade_NetworkAtcIntents": ("network-atc", "Install and start Network ATC; add the intents and wait "
        "until Get-NetIntentStatus shows Success/Completed (1.4.1)."),
    "AzStackHci_Upgrade_BitlockerSuspension": ("bitlocker", "Suspend-BitLocker -MountPoint C: -RebootCount 0 on each "
        "node; Resume-BitLocker -MountPoint C: after the upgrade (R3)."),
    "AzStackHci_Upgrade_WDACEnablement": (None, "Disable the WDAC policies before Arc enablement and re-enable them "
        "with the new policies after the upgrade (R4). If the check crashes with a null-valued expression, rename "
        "the GUID-named .cip files to .backup on every node (TSG)."),
    "AzStackHci_Upgrade_WdacEnablement": (None, "Disable WDAC policies now, re-enable after the upgrade (R4)."),
    "AzStackHci_Upgrade_SupportedCloud": (None, "The Arc agent must be connected to AzureCloud or AzureUSGovernment."),
    "AzStackHci_Upgrade_AzureSupportedCloudType": (None, "Connect the Arc agent to AzureCloud or AzureUSGovernment."),
    "AzStackHci_Upgrade_ClusterRegistrationState": (None, "Register the cluster (Register-AzStackHCI; "
        "-RepairRegistration when the identity or the Cloud Management group is missing)."),
    "AzStackHci_Upgrade_AksHci": (None, "Remove AKS on HCI: Uninstall-AksHci, then Uninstall-Module AksHci -Force "
        "(R11)."),
    "AzStackHci_Upgrade_Moc": (None, "Remove MOC: Uninstall-Moc (R10)."),
    "AzStackHci_Upgrade_MocServices": (None, "Remove the MOC services wssdcloudagent, wssdagent, MocHostAgent (R10)."),
    "AzStackHci_Upgrade_Language": (None, "Only English-installed systems are eligible. For the LCM upgrade user on "
        "each node: Set-WinUserLanguageList -LanguageList (New-WinUserLanguageList -Language en-US) (R5)."),
    "AzStackHci_Upgrade_Test_Storage_Pool": (None, "Free pool space for the 250 GB infrastructure volume: convert "
        "fixed volumes to thin (Set-VirtualDisk -ProvisioningType Thin, then restart the CSV), re-create smaller "
        "volumes, or add drives; raise the pool version with Update-StoragePool (R6, R8)."),
    "AzStackHci_Upgrade_Test_Storage_Volume": (None, "Rename the existing Infrastructure_1 volume: Set-VirtualDisk "
        "-FriendlyName Infrastructure_1 -NewFriendlyName <new> (its CSV path changes: reconfigure its VMs) (R7)."),
    "AzStackHci_Upgrade_Storage": (None, "Pool space, pool version or an Infrastructure_1 volume (R6, R7, R8)."),
    "AzStackHci_Upgrade_Minimum_LCM_Version": (None, "Update the AzureEdgeLifecycleManager Arc extension on each "
        "node (LcmController 10.2408.0.537 or later) (R9)."),
    "AzStackHci_Upgrade_LCMVersion": (None, "Update the AzureEdgeLifecycleManager extension (R9)."),
    "AzStackHci_Upgrade_FreeMemory": (None, "Free more than 8 GB of memory on each node for the Arc Resource Bridge."),
    "AzStackHci_Upgrade_StretchedCluster": (None, "Stretched clusters take the OS upgrade only; wait for 24H2 media."),
    "AzStackHci_Upgrade_ClusterFunctionalLevel": (None, "Raise the cluster functional level to 12 "
        "(Update-ClusterFunctionalLevel; irreversible, needs approval)."),
    "AzStackHci_Upgrade_ClusterNodeUp": (None, "Bring every node Up (Get-ClusterNode; resume paused nodes) (R2)."),
    "AzStackHci_Upgrade_Cluster_NameLength": (None, "The cluster name must be 15 characters or fewer."),
    "AzStackHci_Upgrade_ClusterIPNotIpv6": (None, "Remove the IPv6 Address resource from the Cluster Group."),
    "AzStackHci_Upgrade_Test_Tpm": (None, "Fix the TPM properties after the upgrade (a warning, not a blocker)."),
    "AzStackHci_Upgrade_TPMHealth": (None, "Fix the TPM properties after the upgrade (a warning, not a blocker)."),
}


def guidance(name: str) -> tuple[str | None, str]:
    for prefix in sorted(GUIDANCE, key=len, reverse=True):
        if name.startswith(prefix):
            return GUIDANCE[prefix]
    return None, "See the record's Remediation and https://aka.ms/UpgradeRequirements."


def pool_space(client: ClusterClient) -> str:
    """The numbers behind the pool-space check: free raw bytes against 512 GB (1-2 nodes) or 768 GB (3+)."""
    pool = client.query(Cmdlet("Get-StoragePool", {"IsPrimordial": False}))[0]
    free = int(pool["Size"]) - int(pool["AllocatedSize"])
    need = (512 if len(client.sessions) <= 2 else 768) * GB
    verdict = "enough" if free >= need else f"short by {(need - free) / GB:.0f} GB"
    return (f"pool {pool['FriendlyName']}: {free / GB:.0f} GB raw free, {need / GB:.0f} GB needed for the 256 GB "
            f"infrastructure volume at {'two-way' if need == 512 * GB else 'three-way'} mirror: {verdict}")


@dataclass
class Remedied:
    node: str
    step: str
    changed: bool
    detail: str
    restart: bool = False  # the change takes effect after a restart (the rolling engine does it)


def suspend_bitlocker(client: ClusterClient, node: str) -> Remedied:
    """Suspend BitLocker on C: until it is resumed (-RebootCount 0); a volume already suspended is left alone."""
    session = client.session(node)
    volumes = session.run(Cmdlet("Get-BitLockerVolume", {"MountPoint": "C:"})).objects
    if not volumes or volumes[0].get("ProtectionStatus") != "On":
        return Remedied(node, "bitlocker", False, "protection already off")
    session.run(Cmdlet("Suspend-BitLocker", {"MountPoint": "C:", "RebootCount": 0}))
    return Remedied(node, "bitlocker", True, "suspended until Resume-BitLocker -MountPoint C:")


def resume_bitlocker(client: ClusterClient, node: str) -> Remedied:
    """After the upgrade: resume the protection a suspension left off (a volume already protected is left alone)."""
    session = client.session(node)
    volumes = session.run(Cmdlet("Get-BitLockerVolume", {"MountPoint": "C:"})).objects
    if not volumes or volumes[0].get("ProtectionStatus") != "Off":
        return Remedied(node, "bitlocker-resume", False, "no suspended protection on C:")
    session.run(Cmdlet("Resume-BitLocker", {"MountPoint": "C:"}))
    return Remedied(node, "bitlocker-resume", True, "protection resumed")


def install_features(client: ClusterClient, node: str, features: list[str]) -> Remedied:
    if not features:
        return Remedied(node, "features", False, "nothing missing")
    objects = client.session(node).run(Cmdlet("Install-WindowsFeature", {
        "Name": features, "IncludeAllSubFeature": SWITCH, "IncludeManagementTools": SWITCH})).objects
    restart = bool(objects) and objects[0].get("RestartNeeded") == "Yes"
    return Remedied(node, "features", True, f"installed {', '.join(features)}"
                      + ("; a restart completes it" if restart else ""), restart=restart)


def set_registry(client: ClusterClient, node: str) -> Remedied:
    """The two values of §1.1, without wiping existing keys (Test-Path before New-Item, never New-Item -Force)."""
    session = client.session(node)
    session.run(Cmdlet("Set-ItemProperty", {"Path": FILESYSTEM_KEY, "Name": "RefsEnableMetadataValidation",
                                            "Value": 0, "Type": "DWord"}))
    if not session.run(Cmdlet("Test-Path", {"Path": VID_KEY})).objects[0]:
        session.run(Cmdlet("New-Item", {"Path": VID_KEY}))
    session.run(Cmdlet("Set-ItemProperty", {"Path": VID_KEY, "Name": "SkipSmallLocalAllocations", "Value": 0,
                                            "Type": "DWord"}))
    values = {}
    for key, name in ((FILESYSTEM_KEY, "RefsEnableMetadataValidation"), (VID_KEY, "SkipSmallLocalAllocations")):
        try:
            values[name] = session.run(Cmdlet("Get-ItemProperty", {"Path": key, "Name": name})).objects[0][name]
        except CmdletFailed as e:
            raise RuntimeError(f"{node}: {name} could not be verified: {e}") from None
    if any(v != 0 for v in values.values()):
        raise RuntimeError(f"{node}: registry values not as set: {values}")
    return Remedied(node, "registry", True, "RefsEnableMetadataValidation=0, SkipSmallLocalAllocations=0 "
                                              "(verified; a restart makes them effective)")


def enable_network_atc(client: ClusterClient, node: str) -> Remedied:
    """Install the NetworkATC feature (no restart) and start its service; intents stay the operator's design."""
    session = client.session(node)
    session.run(Cmdlet("Install-WindowsFeature", {"Name": ["NetworkATC"]}))
    session.run(Cmdlet("Set-Service", {"Name": "NetworkATC", "StartupType": "Automatic"}))
    session.run(Cmdlet("Start-Service", {"Name": "NetworkATC"}))
    return Remedied(node, "network-atc", True, "NetworkATC installed and running; add the intents (Add-NetIntent)")


REMEDIATIONS = ("features", "bitlocker", "registry", "network-atc", "bitlocker-resume")


def remediate(client: ClusterClient, failed: list[dict], steps: set[str]) -> list[Remedied]:
    """Run the allowed steps for the nodes whose checks call for them. Each step is idempotent."""
    results: list[Remedied] = []
    nodes = list(client.sessions)
    wanted: dict[str, set[str]] = {n: set() for n in nodes}
    missing: dict[str, list[str]] = {n: [] for n in nodes}
    for row in failed:
        step, _ = guidance(row["name"])
        node = row["node"] if row["node"] in wanted else None
        for target in ([node] if node else nodes):
            if step and step in steps:
                wanted[target].add(step)
            if step == "features" and "Missing features: " in row.get("detail", ""):
                missing[target] += [f.strip() for f in row["detail"].split("Missing features: ")[1].split(",")]
    for always in ("registry", "bitlocker-resume"):  # not tied to a failed check
        if always in steps:
            for n in nodes:
                wanted[n].add(always)
    for node in nodes:
        if "features" in wanted[node]:
            results.append(install_features(client, node, sorted(set(missing[node]))))
        if "network-atc" in wanted[node]:
            results.append(enable_network_atc(client, node))
        if "bitlocker" in wanted[node]:
            results.append(suspend_bitlocker(client, node))
        if "registry" in wanted[node]:
            results.append(set_registry(client, node))
        if "bitlocker-resume" in wanted[node]:
            results.append(resume_bitlocker(client, node))
    return results
