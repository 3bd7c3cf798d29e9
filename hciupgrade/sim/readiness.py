"""The environment checker (Invoke-AzStackHciUpgradeValidation -PassThru) on a simulated node: every check of
reference/domain.md §2.2, computed from the cluster's state and the scenario's `readiness` section, with the real
names, display names, severities, target resource fields and remediation links. The module version knob chooses
per-node records (older modules) or the aggregated "AllNodes" records of the current one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hciupgrade.psenums import NodeState, ReadinessSeverity, ReadinessStatus
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.scenario import REQUIRED_FEATURES, NodeReadiness

UPGRADE_REQS = "https://aka.ms/UpgradeRequirements"
ATC_LINK = "https://aka.ms/UpgradeNetworkATC"
# Test-RequiredWindowsVersionForUpgrade: the build must be 25398 or 26100, the LCU at least these UBRs
# (reference/domain.md §2.2: 10.0.25398.1904, and 10.0.26100.32814 as written in the checker's source)
MIN_UBR = {25398: 1904, 26100: 32814}
MIN_LCM = (10, 2408, 0, 537)
GB = 1024**3


@dataclass
class Check:
    """One per-node result before it becomes a record."""

    name: str
    display: str
    title: str
    severity: ReadinessSeverity
    ok: bool
    detail: str
    target_type: str
    test: str  # the Test-* function, for aggregation
    remediation: str = UPGRADE_REQS
    target: str | None = None
    source: str | None = None


def node_state(sim: SimCluster, node: str) -> NodeReadiness:
    return sim.readiness[node]


def checks_for(sim: SimCluster, node: str) -> list[Check]:
    """Every check as it runs on `node` (node-local checks for this node, cluster checks as seen from it)."""
    r = node_state(sim, node)
    cfg = sim.scenario.readiness
    n = sim.nodes[node]
    out: list[Check] = []
    add = out.append
    crit, warn, info = ReadinessSeverity.CRITICAL, ReadinessSeverity.WARNING, ReadinessSeverity.INFORMATIONAL

    # Test-RequiredWindowsVersionForUpgrade
    build, ubr = int(n.number), r.lcu_ubr if r.lcu_ubr is not None else n.ubr
    all_ubrs = {(node_state(sim, m).lcu_ubr if node_state(sim, m).lcu_ubr is not None else sim.nodes[m].ubr)
                for m in sim.nodes}
    os_ok = build in MIN_UBR and ubr >= MIN_UBR[build] and len(all_ubrs) == 1
    required = " or ".join(f"10.0.{b}.{u}" for b, u in MIN_UBR.items())
    add(Check("AzStackHci_Upgrade_Windows_OS_Version", f"Test Windows OS is Supported {node}",
              "Test Windows OS is Supported", crit, os_ok,
              f"OS version 10.0.{build}.{ubr}; required {required} or later, the same on every node "
              f"(found {', '.join(f'10.0.{build}.{u}' for u in sorted(all_ubrs))})",
              "OperatingSystem", "RequiredWindowsVersionForUpgrade"))
    missing = [f for f in r.missing_features if f in REQUIRED_FEATURES] or list(r.missing_features)
    add(Check("AzStackHci_Required_Windows_Features", f"Test required Windows features {node}",
              "Required Windows Features", crit, not missing,
              "All required features are installed" if not missing else f"Missing features: {', '.join(missing)}",
              "Feature", "RequiredWindowsFeature"))
    # Test-NetworkAtcIntents: a failed step skips the rest
    atc_installed = "NetworkATC" not in r.missing_features
    add(Check("AzStackHci_Upgrade_Test_NetworkATCFeature_Installed", f"Test Network ATC feature is installed on "
              f"the node {node}", "Network ATC feature is installed", crit, atc_installed,
              "NetworkATC is " + ("Installed" if atc_installed else "Available (not installed)"), "NetworkAtcFeature",
              "NetworkAtcIntents", ATC_LINK))
    if atc_installed:
        running = r.network_atc_service == "Running"
        add(Check("AzStackHci_Upgrade_Test_NetworkATCService_Running", f"Test Network ATC service is running {node}",
                  "Network ATC service is running", crit, running, f"NetworkATC service: {r.network_atc_service}",
                  "NetworkAtcService", "NetworkAtcIntents", ATC_LINK))
        if running:
            has = set(cfg.intents)
            add(Check("AzStackHci_Upgrade_Test_NetworkATCIntents_Present", "Test Network ATC intents are present",
                      "Network ATC intents are present", crit, bool(has), f"{len(has) and 1} intent(s) found",
                      "NetworkAtcIntents", "NetworkAtcIntents", ATC_LINK))
            if has:
                need_storage = len(sim.nodes) > 1
                both = "management" in has and ("storage" in has or not need_storage)
                add(Check("AzStackHci_Upgrade_Test_NetworkATCRequiredIntents_Present",
                          "Test required Network ATC intents are present", "Required Network ATC intents", crit,
                          both, "management" + (" and storage" if need_storage else "") + " intent " +
                          ("present" if both else "missing"), "NetworkAtcIntents", "NetworkAtcIntents", ATC_LINK))
                add(Check("AzStackHci_Upgrade_Test_NetworkATCIntent_HealthyState",
                          "Test Network ATC intents are healthy", "Network ATC intent health", crit,
                          cfg.intent_status == "Success", f"ConfigurationStatus {cfg.intent_status}",
                          "NetworkAtcIntents", "NetworkAtcIntents", ATC_LINK))
    for prop in ("TpmPresent", "TpmReady", "TpmEnabled", "TpmActivated"):
        add(Check(f"AzStackHci_Upgrade_Test_Tpm_{prop}_Property", f"Test TPM property `{prop}` is True {node}",
                  f"TPM property {prop}", warn, r.tpm_ready, f"{prop}: {r.tpm_ready}", "TPM", "TPMHealth"))
    add(Check("AzStackHci_Upgrade_BitlockerSuspension", f"Test BitLocker suspension {node}", "BitLocker Suspension",
              crit, r.bitlocker_protection != "On",
              "C: is TPM-protected and ProtectionStatus On: suspend it" if r.bitlocker_protection == "On"
              else "No TPM-protected volume has protection On", "Security", "BitlockerSuspension"))
    add(Check("AzStackHci_Upgrade_WDACEnablement", f"Test WDAC enablement {node}", "WDAC Enablement", crit,
              not r.wdac_enforced, "A WDAC policy is enforced" if r.wdac_enforced else "No enforced WDAC policy",
              "Security", "WdacEnablement"))
    cloud_ok = r.arc_cloud in ("AzureCloud", "AzureUSGovernment")
    add(Check("AzStackHci_Upgrade_SupportedCloud", f"Test Azure supported cloud type {node}",
              "Azure Supported Cloud Type", crit, cloud_ok,
              f"azcmagent cloud: {r.arc_cloud or 'agent not installed'}", "Feature", "AzureSupportedCloudType",
              "https://learn.microsoft.com/azure/azure-local/concepts/system-requirements-23h2"))
    add(Check("AzStackHci_Upgrade_ClusterRegistrationState", f"Test HCI registration state {node}",
              "HCI Registration State", crit, cfg.registered,
              f"RegistrationStatus: {'Registered' if cfg.registered else 'NotYet'}", "Feature",
              "AzureStackHCIRegistrationState"))
    add(Check("AzStackHci_Upgrade_AksHci", f"Test AKS HCI install state on {node}", "AKS HCI Install State", crit,
              r.akshci_state == "NotInstalled", f"AksHci installState: {r.akshci_state}", "Feature",
              "AksHciInstallState"))
    add(Check("AzStackHci_Upgrade_Moc", f"Test MOC install state on {node}", "MOC Install State", crit,
              r.moc_state == "NotInstalled", f"Moc installState: {r.moc_state}", "Feature", "MocInstallState"))
    add(Check("AzStackHci_Upgrade_MocServices", f"Test MOC services install state on {node}",
              "MOC Services Install State", crit, not r.moc_services,
              f"services present: {', '.join(r.moc_services) or 'none'}", "Feature", "MocServicesInstallState"))
    add(Check("AzStackHci_Upgrade_Language", f"Test Language is English {node}", "Language Settings", crit,
              r.language.lower().startswith("en-"), f"LanguageTag: {r.language}", "Language", "Language"))
    add(Check("AzStackHci_Upgrade_Minimum_LCM_Version", f"Test LCM version {node}", "LCM Version", crit,
              r.lcm_version is not None and tuple(int(p) for p in r.lcm_version.split(".")) >= MIN_LCM,
              f"LcmController: {r.lcm_version or 'service not found'}; required 10.2408.0.537", "LCMService",
              "LCMVersion"))
    add(Check("AzStackHci_Upgrade_FreeMemory", f"Test free memory {node}", "Free Memory", crit,
              r.free_memory_gb > 8, f"{r.free_memory_gb:g} GB free; more than 8 GB needed for the Arc Resource Bridge",
              "Memory", "FreeMemory"))
    add(Check("AzStackHci_Upgrade_AlreadyDeployedEnvironment", f"Test already deployed {node}", "Already Deployed",
              info, not r.orchestrator_service,
              "Cluster Upgrade is not allowed on a previously deployed Azure Local cluster" if r.orchestrator_service
              else "Azure Stack HCI Orchestrator Service not found", "Service", "AlreadyDeployed"))
    out += storage_checks(sim)
    out += cluster_checks(sim)
    return out


def storage_checks(sim: SimCluster) -> list[Check]:
    crit = ReadinessSeverity.CRITICAL
    allocated = sum(d.size * 2 for d in sim.disks.values())
    free = sim.pool_size - allocated
    need = 512 * GB if len(sim.nodes) <= 2 else 768 * GB
    problems = []
    if sim.pool_version < 28:
        problems.append(f"pool version {sim.pool_version} < 28: run Update-StoragePool")
    if free < need:
        problems.append(f"free raw {free / GB:.0f} GB < {need / GB:.0f} GB needed for the infrastructure volume")
    if sim.pool_health.name != "Healthy":
        problems.append(f"pool HealthStatus {sim.pool_health.name}")
    pool = Check("AzStackHci_Upgrade_Test_Storage_Pool", f"Test storage pool S2D on {sim.name}", "Storage", crit,
                 not problems, "", "Storage Pool", "Storage",
                 remediation="; ".join(problems) if problems else UPGRADE_REQS, target=f"S2D on {sim.name}")
    infra = sim.scenario.readiness.infrastructure_volume
    volume = Check("AzStackHci_Upgrade_Test_Storage_Volume", "Test storage volume Infrastructure_1", "Storage", crit,
                   not infra, "A volume named Infrastructure_1 exists" if infra else "No Infrastructure_1 volume",
                   "Storage Volume", "Storage", target="Infrastructure_1")
    return [pool, volume]


def cluster_checks(sim: SimCluster) -> list[Check]:
    crit = ReadinessSeverity.CRITICAL
    cfg = sim.scenario.readiness
    out = [
        Check("AzStackHci_Upgrade_Cluster_NameLength", "Test cluster name length", "Cluster name length", crit,
              len(sim.name) <= 15, f"{sim.name}: {len(sim.name)} characters (15 at most)", "Cluster", "Cluster",
              target=sim.name, source="Cluster"),
        Check("AzStackHci_Upgrade_Cluster_Exists", "Test cluster exists", "Cluster exists", crit, True,
              f"Cluster {sim.name} found", "Cluster", "Cluster", target=sim.name, source="Cluster"),
        Check("AzStackHci_Upgrade_StretchedCluster", "Test stretched cluster", "Stretched cluster", crit,
              cfg.sites == 1, f"{cfg.sites} site(s)", "Cluster", "Cluster", target=sim.name, source="Cluster"),
        Check("AzStackHci_Upgrade_ClusterIPNotIpv6", "Test cluster IP is not IPv6", "Cluster IP", crit,
              not cfg.cluster_ip_v6, "IPv6 Address resource in Cluster Group" if cfg.cluster_ip_v6 else "IPv4 only",
              "Cluster", "Cluster", target=sim.name, source="Cluster"),
        Check("AzStackHci_Upgrade_ClusterFunctionalLevel", "Test cluster functional level", "Cluster functional level",
              crit, sim.functional_level == 12, f"ClusterFunctionalLevel {sim.functional_level}; 12 required",
              "Cluster", "Cluster", target=sim.name, source="Cluster"),
    ]
    for other in sim.nodes.values():
        up = other.state == NodeState.Up
        out.append(Check("AzStackHci_Upgrade_ClusterNodeUp", f"Test Cluster Node is up {other.name}",
                         "Test Cluster Node is up", crit, up,
                         f"Node {other.name} is in 'Up' state." if up else f"Nodes {other.name} are not in 'Up' state.",
                         "ClusterNode", "Cluster", target=other.name, source="Cluster"))
    return out


def record(check: Check, node: str, when: str) -> dict[str, Any]:
    status = ReadinessStatus.SUCCESS if check.ok else ReadinessStatus.FAILURE
    target = check.target or node
    return {
        "Name": check.name, "DisplayName": check.display, "Title": check.title, "Tags": {},
        "Status": status, "Severity": check.severity, "Description": f"Checking {check.title.lower()}",
        "Remediation": check.remediation, "TargetResourceID": target, "TargetResourceName": target,
        "TargetResourceType": check.target_type, "Timestamp": when,
        "AdditionalData": {} if check.target_type == "Storage Pool" else {
            "Source": check.source or node, "Resource": check.target_type, "Detail": check.detail,
            "Status": status.name, "TimeStamp": when},
        "HealthCheckSource": "",
    }


def aggregate(checks: list[Check], node: str, when: str) -> list[dict[str, Any]]:
    """New-AggregatedTestResult: per test, one record per severity present; FAILURE if any node failed."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, ReadinessSeverity], list[Check]] = {}
    for check in checks:
        if check.source == "Cluster":  # the cluster checks stay per-node records [INFER, §2.2]
            out.append(record(check, node, when))
        else:
            groups.setdefault((check.test, check.severity), []).append(check)
    titles: dict[str, str] = {}
    for (test, severity), items in groups.items():
        failed = [c for c in items if not c.ok]
        status = ReadinessStatus.FAILURE if failed else ReadinessStatus.SUCCESS
        title = titles.setdefault(test, items[0].title if len(items) == 1 else _title(test))
        detail = "\n".join(f"- {node}\n  - {c.detail}" for c in failed)
        out.append({
            "Name": f"AzStackHci_Upgrade_{test}", "DisplayName": title, "Title": title,
            "Tags": {"IsAggregated": "True", "NodeCount": "1", "StatusGroup": status.name},
            "Status": status, "Severity": severity, "Description": f"Checking {title.lower()}",
            "Remediation": failed[0].remediation if failed else items[0].remediation,
            "TargetResourceID": "AllNodes", "TargetResourceName": "AllNodes",
            "TargetResourceType": "AllNodes:OperatingSystem", "Timestamp": when,
            "AdditionalData": {"Source": "AllNodes", "Resource": items[0].target_type, "Status": status.name,
                               "Detail": detail, "TimeStamp": when, "IsAggregated": "True",
                               "StatusGroup": status.name, "NodeCount": "1", "TotalNodes": "1",
                               "TotalChecks": str(len(items))},
            "HealthCheckSource": ""})
    return out


TITLES = {"RequiredWindowsVersionForUpgrade": "Required Windows Version", "RequiredWindowsFeature":
          "Required Windows Features", "NetworkAtcIntents": "Network ATC Intents", "TPMHealth": "TPM Health",
          "Storage": "Storage"}


def _title(test: str) -> str:
    return TITLES.get(test, test)


def validation(sim: SimCluster, node: str) -> list[dict[str, Any]]:
    when = sim.clock.datetime_at(sim.now()).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    checks = checks_for(sim, node)
    if sim.scenario.readiness.module == "per-node":
        return [record(c, node, when) for c in checks]
    return aggregate(checks, node, when)

