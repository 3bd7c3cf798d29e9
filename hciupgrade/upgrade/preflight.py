"""Before anything changes: the run's preflight, the scan (what each node would get) and the plan.

Each check is a Finding; a blocking one stops the run before it touches the cluster. `--dry-run` prints the same
findings and the plan, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hciupgrade.cau import setup_findings
from hciupgrade.cluster import FEATURE, ClusterClient, ClusterSnapshot, NodeInfo, Prerequisites
from hciupgrade.models import RunOptions
from hciupgrade.psenums import NodeState
from hciupgrade.remote import Cmdlet, NodeUnreachable, RemoteError
from hciupgrade.targets import Release, at_least, support_notes, version_tuple
from hciupgrade.upgrade.gates import storage_busy
from hciupgrade.upgrade.positions import held_by


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    blocking: bool = True

    @property
    def level(self) -> str:
        return "ok" if self.ok else ("BLOCKS" if self.blocking else "warning")


@dataclass(frozen=True)
class ScanRow:
    node: str
    current: str | None
    offered: str | None
    error: str | None = None


@dataclass(frozen=True)
class PlannedNode:
    node: str
    action: str  # upgrade, restart, adopt, skip, refuse
    detail: str
    steps: tuple[str, ...] = ()
    position: str = ""  # hciupgrade.upgrade.positions.Position


@dataclass
class Preflight:
    findings: list[Finding] = field(default_factory=list)
    scan: list[ScanRow] = field(default_factory=list)
    plan: list[PlannedNode] = field(default_factory=list)
    nodes: list[NodeInfo] = field(default_factory=list)
    reachable: dict[str, bool] = field(default_factory=dict)
    builds: dict[str, str] = field(default_factory=dict)  # each reachable node's OS build
    snapshot: ClusterSnapshot | None = None  # storage as the preflight read it
    cleanup: list[str] = field(default_factory=list)  # approved clean-ups the run does before its first node
    read: dict[str, Prerequisites] = field(default_factory=dict)  # each reachable node's one read
    groups: list[dict[str, Any]] | None = None  # the cluster's groups, when the preflight read them

    @property
    def blocked(self) -> bool:
        return any(not f.ok and f.blocking for f in self.findings)

    def blocking_reasons(self) -> list[str]:
        return [f"{f.check}: {f.detail}" for f in self.findings if not f.ok and f.blocking]


def _cau_setup(client: ClusterClient, add: Callable[[Finding], None]) -> None:
    """Engine cau: Test-CauSetup's findings (CAU's Best Practices Analyzer) join the preflight, and the second
    hop CAU needs (its role reaches every node and Active Directory) is proven, or the run refuses naming the fix.
    The Remote Shutdown rule only warns: the run passes -EnableFirewallRules."""
    try:
        findings = setup_findings(client)
    except RemoteError as e:
        add(Finding("CAU setup (Test-CauSetup)", False, f"Test-CauSetup failed: {e}"))
        findings = []
    for title, severity, detail in findings:
        add(Finding(f"CAU setup: {title}", False, detail or severity,
                    blocking=severity == "Error" and "Remote Shutdown" not in title))
    if not findings:
        add(Finding("CAU setup (Test-CauSetup)", True, "no errors or warnings"))
    refused = client.second_hop()
    add(Finding("second hop for CAU", refused is None, "a node's session reaches the other nodes" if refused is None
                else f"refused {refused}: CAU's role reaches every node and Active Directory from one node; enable "
                     "CredSSP (Enable-WSManCredSSP -Role Server on the nodes, transport credssp in the inventory) "
                     "or resource-based constrained delegation, or use Engine: hci-upgrade"))


def check(client: ClusterClient, options: RunOptions, owned: set[str]) -> Preflight:
    """Every preflight check, the scan and the facts the plan needs. Reads only."""
    pre = Preflight()
    add = pre.findings.append
    builds = pre.builds
    # one read a node, all at once (Get-UpgradePrerequisites.ps1): it answers on WinRM, its build for the scan, and
    # everything below reads of the node
    feature = options.restart_only is None and options.update == "feature"
    target = options.release
    read = client.each(lambda node: client.prerequisites(
        node, setup_path=options.setup_path if options.update == "feature" else None,
        package_path=options.update_package if options.update == "cumulative" else None,
        registry=target.registry if feature else (), adapters=feature and bool(target.nic_drivers),
        kind=FEATURE if feature else None))
    for name, found in read.items():
        if isinstance(found, NodeUnreachable):
            pre.reachable[name] = False
            continue
        if isinstance(found, RemoteError):
            raise found
        builds[name] = found.build
        pre.reachable[name] = True
        pre.read[name] = found
    down = [n for n, ok in pre.reachable.items() if not ok]
    add(Finding("nodes reachable", not down,
                "every node answers on WinRM" if not down else f"no answer from {', '.join(down)}",
                blocking=options.require_all_nodes_online))
    try:  # nodes, disks, jobs and pool in one read: the nodes' findings and the storage finding below
        pre.snapshot = client.snapshot()
        pre.nodes = list(pre.snapshot.nodes)
    except NodeUnreachable as e:
        add(Finding("cluster", False, str(e)))
        return pre
    # Engine cau: a CAU run in progress is followed, never restarted; the nodes and storage it has out are its own
    following = False
    try:
        cau = client.cau_run_state()
        following = options.engine == "cau" and cau == "RunInProgress"
        if following:
            add(Finding("CAU run in progress", True, "Get-CauRun: RunInProgress: this run follows it to its end"))
        else:
            add(Finding("no CAU run in progress", cau == "RunNotInProgress",
                        f"Get-CauRun: {cau}" + ("" if cau == "RunNotInProgress" else
                                                 " (finish it, or recover with Invoke-CauRun -ForceRecovery -Force)")))
    except RemoteError as e:
        add(Finding("no CAU run in progress", False, f"Get-CauRun failed: {e}"))
    foreign = [n.name for n in pre.nodes if n.state == NodeState.Paused and n.name not in owned]
    add(Finding("no node paused by someone else", not foreign,
                "none" if not foreign else "; ".join(f"{name} paused by {_holder(client, name)}" for name in foreign)
                + ": resume it by hand or finish what it is paused for; it will not be resumed by this run",
                blocking=not following))
    not_up = [f"{n.name} is {n.state.name}" for n in pre.nodes
              if n.state not in (NodeState.Up, NodeState.Paused) and n.name not in owned]
    add(Finding("nodes online", not not_up, "all Up or Paused" if not not_up else "; ".join(not_up),
                blocking=not following and (options.require_all_nodes_online or bool(not_up))))
    busy = storage_busy(pre.snapshot)
    ours_away = any(n.state != NodeState.Up and n.name in owned for n in pre.nodes)
    repairing = any("storage job" in b for b in busy)
    add(Finding("storage healthy", not busy, "pool and every virtual disk Healthy" if not busy else "; ".join(busy),
                blocking=bool(busy) and not (ours_away or repairing or following)))
    if options.engine == "cau" and not following:
        _cau_setup(client, add)
    witness = client.quorum_witness()
    voting = sum(1 for n in pre.nodes if n.state in (NodeState.Up, NodeState.Paused))  # a paused node votes
    votes = len(pre.nodes) + (1 if witness else 0)
    # with a node already away (ours, from a crashed run), nothing else leaves until it is back
    remaining = voting - (1 if voting == len(pre.nodes) else 0) + (1 if witness else 0)
    add(Finding("quorum with one node away", remaining > votes / 2,
                f"{remaining} of {votes} votes remain while a node is away (witness: {witness or 'none'})"))
    if options.restart_only is None:
        prerequisites(client, [n for n in client.sessions if pre.reachable.get(n)], pre)
    if feature:
        release_checks(client, options, pre)
    if options.update == "cumulative":
        pre.scan = package_scan(client, options, pre)
        missing = [row.node for row in pre.scan if row.error]
        packages = {row.offered for row in pre.scan if row.offered}
        add(Finding("the same update package on every node", not missing and len(packages) <= 1,
                    f"{options.update_package}: " + (f"missing on {', '.join(missing)}" if missing else
                                                     "one package" if len(packages) <= 1 else
                                                     "different files: " + ", ".join(sorted(packages)))))
        return pre
    pre.scan = scan(client, pre)
    missing = [row.node for row in pre.scan if row.error and row.node in builds]
    add(Finding("setup media on every node", not missing,
                f"{options.setup_path}: " + (f"unreadable on {', '.join(missing)}" if missing else "found")))
    offered = {row.offered for row in pre.scan if row.offered}
    add(Finding("same feature update offered to every node", len(offered) <= 1,
                f"offered: {', '.join(sorted(offered)) or 'nothing'}", blocking=False))
    if offered and not all(options.build_reached(b) for b in offered):
        add(Finding("media reaches the target build", False,
                    f"the media offers {', '.join(sorted(offered))}, below {options.goal_build}"))
    if following:  # CAU's run is under way with what it checked itself: this run only watches it end
        pre.findings = [replace(f, blocking=False) for f in pre.findings]
    return pre


# A restart is pending when any of Windows' three places says so (the servicing stack, Windows Update, a file
# rename queued for the next boot), as the PendingReboot checks operators use read them
REBOOT_PENDING = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending"
WU_REBOOT_REQUIRED = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired"
SESSION_MANAGER = r"HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager"
AU_POLICY = r"HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU"
AU_AUTO_INSTALL = 4  # AUOptions: download and install on a schedule (and restart), unless NoAutoUpdate is 1
# The "Remote Shutdown" rule group by its indirect string: the display name is localised ("Remote Shutdown" on an
# English node only), the group is not (reference/domain.md §5: `@firewallapi.dll,-36751`)
REMOTE_SHUTDOWN_GROUP = "@firewallapi.dll,-36751"


def prerequisites(client: ClusterClient, nodes: list[str], pre: Preflight) -> None:
    """The update's prerequisites on every node that answers, each with its fix (reference/domain.md §1.2, O1-O2):
    WinRM and remoting answer (the reachability finding), the Remote Shutdown firewall rules, no restart
    pending, automatic updates that do not install and restart on their own. From the preflight's read of each
    node (`pre.read`), or read now for a node it lacks."""
    def read(node: str) -> tuple[bool, bool, bool]:  # (firewall closed, restart pending, installs by itself)
        found = pre.read.get(node) or client.prerequisites(node)
        rules = found.firewall_rules_enabled
        return (not rules or any(enabled != "True" for enabled in rules),
                any(found.restart_flagged) or found.pending_file_renames,
                found.no_auto_update != "1" and found.au_options == str(AU_AUTO_INSTALL))

    firewall, pending, auto = [], [], []
    for node, found in client.each(read, nodes).items():
        if isinstance(found, RemoteError):
            pre.findings.append(Finding(f"prerequisites on {node}", False, f"could not be read: {found}"))
            continue
        for bad, names in zip(found, (firewall, pending, auto), strict=True):
            if bad:
                names.append(node)
    add = pre.findings.append
    add(Finding("Remote Shutdown firewall rules enabled", not firewall,
                "on every node" if not firewall else f"disabled on {', '.join(firewall)}: run "
                f"Enable-NetFirewallRule -Group '{REMOTE_SHUTDOWN_GROUP}' there (any display language)"))
    add(Finding("no restart pending", not pending,
                "none" if not pending else f"{', '.join(pending)} wait for a restart: restart them one at a time "
                "first (hci-upgrade upgrade with restart_only)"))
    add(Finding("automatic updates do not install on their own", not auto,
                "no node installs and restarts by itself" if not auto else f"{', '.join(auto)} install updates "
                "automatically (AUOptions 4): set the Windows Update policy to notify (2) for the upgrade"))


CLOUD_MANAGEMENT = "Cloud Management"
AKS_HCI_MODULE = "AksHci"


def release_checks(client: ClusterClient, options: RunOptions, pre: Preflight) -> None:
    """What the target release's current page asks before the OS upgrade (hciupgrade/targets.py), each with its
    fix: the lowest source build, AKS on HCI removed, the registry values, and for 24H2 the NIC drivers, the OEM's
    sign-off and the Cloud Management group's clean-up (irreversible: only with an approval)."""
    target = options.release
    add = pre.findings.append
    add(Finding("target release", True, f"{target.name}: {target.build}.x from {target.media}; then its cumulative "
                                        f"update to {target.lcu_minimum} or later"))
    for note in support_notes(target):
        add(Finding(f"{target.name} supported", False, note, blocking=False))
    policy = options.vm_policy
    add(Finding("workload policy", True, "shut-down: each node's VMs are shut down before its drain and started "
                "after its resume (the page's recommendation)" if policy == "shut-down" else
                "live-migrate: the VMs move to other nodes and keep running (the page recommends shutting them "
                "down: WorkloadPolicy shut-down)"))
    nodes = [n for n in client.sessions if pre.reachable.get(n)]
    low = [f"{n} runs {b}" for n, b in pre.builds.items()
           if not target.runs(b) and not (b.startswith("10.0.20349.") and at_least(b, target.min_source))]
    add(Finding(f"source build for {target.name}", not low,
                f"every node at {target.min_source} or later (or on {target.number})" if not low else
                "; ".join(low) + f": the path to {target.name} starts at {target.min_source}; install the latest "
                "22H2 cumulative update on those nodes first (Windows Update, or CAU with "
                "Microsoft.WindowsUpdatePlugin)"))
    aks = [n for n in nodes if pre.read[n].aks_hci]
    add(Finding("AKS on Azure Stack HCI removed", not aks,
                "not installed" if not aks else f"the AksHci module is on {', '.join(aks)}: run Uninstall-AksHci, "
                "then Uninstall-Module -Name AksHci -Force (its Kubernetes versions cannot be upgraded)"))
    unset = [f"{name} on {node}" for i, (_, name) in enumerate(target.registry) for node in nodes
             if pre.read[node].registry_values[i] != 0]
    add(Finding("registry values set before the OS upgrade", not unset,
                "set to 0 on every node" if not unset else f"not 0: {', '.join(unset)}: hci-upgrade readiness "
                "--remediate registry, then a rolling restart (restart_only) before the upgrade", blocking=False))
    if target.nic_drivers:
        nic_findings(target, nodes, pre)
        add(Finding("OEM driver sign-off", False, f"consult the OEM: drivers compatible with {target.number} "
                                                  "installed before the upgrade (not readable remotely)",
                    blocking=False))
    pre.groups = client.query(Cmdlet("Get-ClusterGroup"))
    groups = {str(g.get("Name")) for g in pre.groups}
    present = CLOUD_MANAGEMENT in groups
    if target.cloud_management_cleanup:
        approved = options.approval is not None and "cloud-management" in options.approval.steps
        if present and approved:
            pre.cleanup.append(CLOUD_MANAGEMENT)
        add(Finding(f"'{CLOUD_MANAGEMENT}' group cleaned up", not present or approved,
                    "absent" if not present else f"present: removed before the first node, approved by "
                    f"{options.approval.approver} ({options.approval.reason})" if approved else
                    f"present: the {target.name} path removes it (irreversible); run again with --approve "
                    "cloud-management --reason '<change>'"))
    elif not present:
        add(Finding(f"'{CLOUD_MANAGEMENT}' group present", False, "absent: if the cluster resource's identity lacks "
                    "type SystemAssigned, run Register-AzStackHCI ... -RepairRegistration first", blocking=False))


def nic_findings(target: Release, nodes: list[str], pre: Preflight) -> None:
    """Physical NICs whose driver is not newer than the target's inbox one: the upgrade would leave them on it."""
    old = []
    for node in nodes:
        for name, provider, version in pre.read[node].adapters:
            rule = next((d for d in target.nic_drivers if d.vendor.lower() in provider.lower()), None)
            if rule and version and version_tuple(version) <= version_tuple(rule.inbox):
                old.append(f"{node} {name} ({provider} {version}, inbox {rule.inbox}, recommended "
                           f"{rule.recommended})")
    pre.findings.append(Finding("NIC drivers newer than the inbox ones", not old,
                                "every physical NIC" if not old else "; ".join(old) + ": install the OEM's "
                                "driver before the upgrade"))


def package_scan(client: ClusterClient, options: RunOptions, pre: Preflight) -> list[ScanRow]:
    """The cumulative update staged on each node, identified by its SHA-256 (the same file on every node)."""
    rows = []
    for name in client.sessions:
        found = pre.read.get(name)
        if found is None:
            rows.append(ScanRow(name, None, None, "not reachable"))
        elif found.package_hash:
            rows.append(ScanRow(name, found.build, "sha256 " + found.package_hash[:12]))
        else:
            rows.append(ScanRow(name, found.build, None, found.package_error or "no such file"))
    return rows


def _holder(client: ClusterClient, node: str) -> str:
    try:
        return held_by(client.pause_mark(node))
    except RemoteError:
        return held_by(None)


def scan(client: ClusterClient, pre: Preflight) -> list[ScanRow]:
    """What each node would get: its build now and the build on its media (both from the preflight's read)."""
    rows = []
    for name in client.sessions:
        found = pre.read.get(name)
        if found is None:
            rows.append(ScanRow(name, None, None, "not reachable"))
        elif found.media_version is None:
            rows.append(ScanRow(name, None, None, found.media_error or "no image in the media"))
        else:
            rows.append(ScanRow(name, found.build, found.media_version))
    return rows
