"""Before anything changes: the run's preflight, the scan (what each node would get) and the plan.

Each check is a Finding; a blocking one stops the run before it touches the cluster. `--dry-run` prints the same
findings and the plan, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hciupgrade.cluster import ClusterClient, ClusterSnapshot, NodeInfo
from hciupgrade.models import RunOptions
from hciupgrade.psenums import NodeState
from hciupgrade.remote import Cmdlet, NodeUnreachable, RemoteError
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

    @property
    def blocked(self) -> bool:
        return any(not f.ok and f.blocking for f in self.findings)

    def blocking_reasons(self) -> list[str]:
        return [f"{f.check}: {f.detail}" for f in self.findings if not f.ok and f.blocking]


def check(client: ClusterClient, options: RunOptions, owned: set[str]) -> Preflight:
    """Every preflight check, the scan and the facts the plan needs. Reads only."""
    pre = Preflight()
    add = pre.findings.append
    builds = pre.builds
    # one registry read a node, all at once: it answers on WinRM, and its build for the scan
    for name, build in client.each(client.os_build).items():
        if isinstance(build, NodeUnreachable):
            pre.reachable[name] = False
            continue
        if isinstance(build, RemoteError):
            raise build
        builds[name] = build
        pre.reachable[name] = True
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
    foreign = [n.name for n in pre.nodes if n.state == NodeState.Paused and n.name not in owned]
    add(Finding("no node paused by someone else", not foreign,
                "none" if not foreign else "; ".join(f"{name} paused by {_holder(client, name)}" for name in foreign)
                + ": resume it by hand or finish what it is paused for; it will not be resumed by this run"))
    not_up = [f"{n.name} is {n.state.name}" for n in pre.nodes
              if n.state not in (NodeState.Up, NodeState.Paused) and n.name not in owned]
    add(Finding("nodes online", not not_up, "all Up or Paused" if not not_up else "; ".join(not_up),
                blocking=options.require_all_nodes_online or bool(not_up)))
    try:
        cau = client.cau_run_state()
        add(Finding("no CAU run in progress", cau == "RunNotInProgress",
                    f"Get-CauRun: {cau}" + ("" if cau == "RunNotInProgress" else
                                             " (finish it, or recover with Invoke-CauRun -ForceRecovery -Force)")))
    except RemoteError as e:
        add(Finding("no CAU run in progress", False, f"Get-CauRun failed: {e}"))
    busy = storage_busy(pre.snapshot)
    ours_away = any(n.state != NodeState.Up and n.name in owned for n in pre.nodes)
    repairing = any("storage job" in b for b in busy)
    add(Finding("storage healthy", not busy, "pool and every virtual disk Healthy" if not busy else "; ".join(busy),
                blocking=bool(busy) and not (ours_away or repairing)))
    witness = client.quorum_witness()
    voting = sum(1 for n in pre.nodes if n.state in (NodeState.Up, NodeState.Paused))  # a paused node votes
    votes = len(pre.nodes) + (1 if witness else 0)
    # with a node already away (ours, from a crashed run), nothing else leaves until it is back
    remaining = voting - (1 if voting == len(pre.nodes) else 0) + (1 if witness else 0)
    add(Finding("quorum with one node away", remaining > votes / 2,
                f"{remaining} of {votes} votes remain while a node is away (witness: {witness or 'none'})"))
    if options.restart_only is None:
        prerequisites(client, [n for n in client.sessions if pre.reachable.get(n)], pre)
    if options.update == "cumulative":
        pre.scan = package_scan(client, options, builds)
        missing = [row.node for row in pre.scan if row.error]
        packages = {row.offered for row in pre.scan if row.offered}
        add(Finding("the same update package on every node", not missing and len(packages) <= 1,
                    f"{options.update_package}: " + (f"missing on {', '.join(missing)}" if missing else
                                                     "one package" if len(packages) <= 1 else
                                                     "different files: " + ", ".join(sorted(packages)))))
        return pre
    pre.scan = scan(client, options, builds)
    missing = [row.node for row in pre.scan if row.error and row.node in builds]
    add(Finding("setup media on every node", not missing,
                f"{options.setup_path}: " + (f"unreadable on {', '.join(missing)}" if missing else "found")))
    offered = {row.offered for row in pre.scan if row.offered}
    add(Finding("same feature update offered to every node", len(offered) <= 1,
                f"offered: {', '.join(sorted(offered)) or 'nothing'}", blocking=False))
    if offered and not all(options.build_reached(b) for b in offered):
        add(Finding("media reaches the target build", False,
                    f"the media offers {', '.join(sorted(offered))}, below {options.goal_build}"))
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
    pending, automatic updates that do not install and restart on their own."""
    def read(node: str) -> tuple[bool, bool, bool]:  # (firewall closed, restart pending, installs by itself)
        session = client.session(node)
        rules = session.run(Cmdlet("Get-NetFirewallRule", {"Group": REMOTE_SHUTDOWN_GROUP})).objects
        flagged = session.run(Cmdlet("Test-Path", {"Path": (REBOOT_PENDING, WU_REBOOT_REQUIRED)})).objects
        renames = client.registry_value(node, SESSION_MANAGER, "PendingFileRenameOperations")
        au = session.run(Cmdlet("Get-ItemProperty", {"Path": AU_POLICY})).objects
        policy = au[0] if au and isinstance(au[0], dict) else {}
        return (not rules or any(str(r.get("Enabled")) != "True" for r in rules),
                True in flagged or bool(renames),
                str(policy.get("NoAutoUpdate")) != "1" and str(policy.get("AUOptions")) == str(AU_AUTO_INSTALL))

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


def package_scan(client: ClusterClient, options: RunOptions, builds: dict[str, str]) -> list[ScanRow]:
    """The cumulative update staged on each node, identified by its SHA-256 (the same file on every node)."""
    call = Cmdlet("Get-FileHash", {"Path": options.update_package, "Algorithm": "SHA256"})
    results = client.each(lambda name: client.session(name).run(call), builds)
    rows = []
    for name in client.sessions:
        result = results.get(name)
        if result is None:
            rows.append(ScanRow(name, None, None, "not reachable"))
        elif isinstance(result, RemoteError):
            raise result
        elif result.objects:
            rows.append(ScanRow(name, builds[name], "sha256 " + str(result.objects[0]["Hash"])[:12]))
        else:
            rows.append(ScanRow(name, builds[name], None,
                                result.errors[0].message if result.errors else "no such file"))
    return rows


def _holder(client: ClusterClient, node: str) -> str:
    try:
        return held_by(client.pause_mark(node))
    except RemoteError:
        return held_by(None)


def scan(client: ClusterClient, options: RunOptions, builds: dict[str, str]) -> list[ScanRow]:
    """What each node would get: its build now (read by the preflight) and the build on its media."""
    media = client.each(lambda name: client.media_build(name, options.setup_path), builds)
    rows = []
    for name in client.sessions:
        found = media.get(name)
        if found is None:
            rows.append(ScanRow(name, None, None, "not reachable"))
        elif isinstance(found, RemoteError):
            rows.append(ScanRow(name, None, None, str(found)))
        else:
            rows.append(ScanRow(name, builds[name], found))
    return rows
