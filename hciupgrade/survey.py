"""The first command against a real cluster, safe at any time: it connects to every node through sessions that can
only read (remote/readonly.py), and checks every answer the tool depends on against what its parsers expect (type
names, properties, enum and version forms) and what the procedure needs (transport and authentication, the second
hop, prerequisites, media, quorum, storage, VMs). Each check is a finding: expected, observed, verdict (ok, warning,
blocking) and the fix. It also writes a twin: a scenario of this cluster that `hci-upgrade demo --scenario` runs as a
rehearsal, with the knobs it observed (second hop, the pool version's form, the display language)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hciupgrade.azure.arm import ArmError
from hciupgrade.azure.solution import AzureCluster
from hciupgrade.cluster import CURRENT_VERSION_KEY, ClusterClient, NodeInfo
from hciupgrade.models import RunOptions
from hciupgrade.psenums import HealthStatus, NodeState, VMState, parse
from hciupgrade.remote import AuthFailed, Cmdlet, RemoteError
from hciupgrade.remote.readonly import ReadOnlySession
from hciupgrade.targets import support_notes
from hciupgrade.upgrade.preflight import REMOTE_SHUTDOWN_GROUP, Preflight, prerequisites

Verdict = Literal["ok", "warning", "blocking"]
SOURCE_BUILD = "20349"  # 22H2, what this path upgrades from
ENGLISH_GROUP = "Remote Shutdown"


@dataclass
class Finding:
    check: str
    verdict: Verdict
    expected: str
    observed: str
    fix: str = ""


@dataclass
class Survey:
    cluster: str
    findings: list[Finding] = field(default_factory=list)
    twin: dict[str, Any] = field(default_factory=dict)  # what the checks read for the twin
    scenario: dict[str, Any] = field(default_factory=dict)  # the twin: a scenario of this cluster
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # node -> what each read answered

    @property
    def blocking(self) -> bool:
        return any(f.verdict == "blocking" for f in self.findings)

    def add(self, check: str, verdict: Verdict, expected: str, observed: str, fix: str = "") -> None:
        self.findings.append(Finding(check, verdict, expected, observed, fix if verdict != "ok" else ""))

    def report(self) -> dict[str, Any]:
        """survey.json: the cluster and its findings."""
        return {"cluster": self.cluster, "findings": [asdict(f) for f in self.findings]}


def read_only(client: ClusterClient) -> ClusterClient:
    """The client with every session wrapped: anything but a read is refused before it is sent."""
    client.sessions = {name: ReadOnlySession(s) for name, s in client.sessions.items()}
    return client


def survey(client: ClusterClient, options: RunOptions, azure: AzureCluster | None = None) -> Survey:
    """Every check, each on its own: a node that does not answer is reported and the others are surveyed. With
    `azure` (the inventory's azure section), the cluster's Azure side is read too (GETs only)."""
    result = Survey(client.name)
    target = options.release
    notes = support_notes(target)
    result.add("target release", "warning" if notes else "ok", f"{target.name} ({target.number}) supported",
               "; ".join(notes) or f"{target.name}: from {target.min_source}, {target.media}",
               "; ".join(notes))
    reachable = _transport(client, result)
    nodes = [n for n in client.sessions if n in reachable]
    if nodes:
        for check in (_cluster_nodes, _storage, _pool, _vms, _quorum, _cau, _second_hop, _prerequisites,
                      _media, _language):
            try:
                check(client, options, result, nodes)
            except RemoteError as e:
                result.add(check.__name__.strip("_").replace("_", " "), "blocking", "an answer",
                           f"{type(e).__name__}: {e}", "see the error; run the survey again")
    if azure is not None:
        _azure(azure, result)
    result.answers = {n: s.answers for n, s in client.sessions.items() if isinstance(s, ReadOnlySession)}
    result.scenario = twin_scenario(client, result, options, reachable)
    return result


def _azure(azure: AzureCluster, result: Survey) -> None:
    """The solution upgrade's prerequisites in Azure, read and never written (the cluster resource, each Arc
    machine's LCM extension, the key vault and its secret, the IP pool); readiness is `hci-upgrade readiness`'s."""
    try:
        found = [p for p in azure.prerequisites([]) if p.check != "readiness"]
    except ArmError as e:
        result.add("Azure side", "blocking", "Azure Resource Manager answers", str(e),
                   "check the inventory's azure section and its credential")
        return
    for p in found:
        result.add(f"Azure: {p.check}", "ok" if p.ok else "blocking", "present as the solution upgrade needs",
                   p.detail, p.detail)


# --- the checks ---------------------------------------------------------------------------------------------------
def _transport(client: ClusterClient, result: Survey) -> dict[str, str]:
    builds: dict[str, str] = {}
    for node, found in client.each(lambda n: client.os_build(n, timeout=60)).items():
        where = f"{client.inventory.transport.scheme} {client.inventory.transport.auth}"
        if isinstance(found, AuthFailed):
            result.add(f"{node}: WinRM and authentication", "blocking", f"a session over {where}", str(found),
                       "check the inventory's credential and that the account is an administrator on the node")
        elif isinstance(found, RemoteError):
            result.add(f"{node}: WinRM and authentication", "blocking", f"a session over {where}", str(found),
                       "check the node's address and port, that WinRM listens (winrm quickconfig), the firewall, "
                       "and for HTTPS the certificate (cert_validation)")
        else:
            builds[node] = found
            result.add(f"{node}: WinRM and authentication", "ok", f"a session over {where}", "answers")
            form = re.fullmatch(r"10\.0\.(\d{5})\.(\d+)", found)
            if form is None:
                result.add(f"{node}: build", "blocking", "10.0.<build>.<UBR> from CurrentVersion", found,
                           f"read {CURRENT_VERSION_KEY} on the node: CurrentBuildNumber and UBR")
            elif form.group(1) == SOURCE_BUILD:
                result.add(f"{node}: build", "ok", f"10.0.{SOURCE_BUILD}.x (22H2)", found)
            else:
                result.add(f"{node}: build", "warning", f"10.0.{SOURCE_BUILD}.x (22H2)", found,
                           "a node not on 22H2: the upgrade skips one already on the target, refuses others")
    return builds


def _cluster_nodes(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    raw = client.ask(Cmdlet("Get-ClusterNode"))
    types = {t[0] for t in raw.types if t}
    expected = "Microsoft.FailoverClusters.PowerShell.ClusterNode"
    _form(result, "Get-ClusterNode type", expected, ", ".join(sorted(types)) or "nothing", expected in types)
    parsed = _parsed(result, "Get-ClusterNode State and DrainStatus", raw.objects, NodeInfo.parse)
    away = [f"{n.name} is {n.state.name}" for n in parsed if n.state != NodeState.Up]
    result.add("every node Up", "ok" if not away else "blocking", "every node Up", "; ".join(away) or "all Up",
               "resume or repair the nodes first; hci-upgrade never takes over a pause that is not its own")


def _storage(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    snapshot = client.snapshot()
    sick = [f"{d.name} is {d.health.name}" for d in snapshot.disks if d.health != HealthStatus.Healthy]
    sick += [f"storage job {j.name} {j.percent}%" for j in snapshot.jobs if j.state.name == "Running"]
    result.add("storage healthy", "ok" if not sick else "blocking", "every virtual disk Healthy, no repair job",
               "; ".join(sick) or f"{len(snapshot.disks)} volumes Healthy",
               "wait for the repair to finish (Get-StorageJob) before any node leaves")
    volumes = client.query(Cmdlet("Get-VirtualDisk"))
    result.twin["volumes"] = [{"name": str(v["FriendlyName"]), "size_gb": round(int(v.get("Size") or 0) / 1024**3),
                               "resiliency": "Parity" if "parity" in str(v.get("ResiliencySettingName")).lower()
                               else "Mirror"} for v in volumes]


def _pool(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    raw = client.query(Cmdlet("Get-StoragePool", {"IsPrimordial": False}))
    shown = raw[0].get("Version") if raw else None
    name, version = client.pool()
    form = "number" if isinstance(shown, int) or str(shown).isdigit() else "text"
    result.add("storage pool version", "ok", "a number from the CIM property (Get-StoragePool shows a text on "
               "Windows)", f"{name}: Version shows {shown!r}, the CIM number is {version}")
    result.twin.setdefault("knobs", {})["pool_version_form"] = form
    result.twin["pool_version"] = version
    result.twin["functional_level"] = int(client.query(Cmdlet("Get-Cluster"))[0]["ClusterFunctionalLevel"])


def _vms(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    twin_vms, odd = [], []
    for node, vms in client.each(client.vms, nodes).items():
        if isinstance(vms, RemoteError):
            result.add(f"{node}: VMs", "warning", "Get-VM answers", str(vms), "check Hyper-V on the node")
            continue
        for vm in vms:
            try:
                state = parse(VMState, vm["State"]).name
            except ValueError:
                result.add(f"{node}: VM {vm.get('Name')} state", "blocking", "a VMState", repr(vm.get("State")),
                           "report this answer (raw/ in the survey's folder): the parser does not know it")
                continue
            if state not in ("Running", "Off"):
                odd.append(f"{vm['Name']} is {state}")
            memory = int(vm.get("MemoryStartup") or vm.get("MemoryAssigned") or 0) / 1024**3
            twin_vms.append({"name": str(vm["Name"]), "owner": node, "memory_gb": round(memory, 1) or 4,
                             "state": state})
    result.add("VM states", "ok" if not odd else "warning", "Running or Off", "; ".join(odd) or
               f"{len(twin_vms)} VMs Running or Off", "a VM saving, paused or in a Critical state is not moved by "
               "a drain: settle it first")
    result.twin["vms"] = twin_vms


def _quorum(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    witness = client.quorum_witness()
    result.add("quorum witness", "ok" if witness else "warning", "a witness (cloud or file share)",
               str(witness or "none"), "configure a witness: with one node out, a 2-node cluster needs it")
    result.twin.setdefault("knobs", {})["witness"] = "none" if not witness else (
        "Cloud Witness" if "cloud" in str(witness).lower() else "File Share Witness")
    sr = client.storage_replica()
    result.twin["knobs"]["storage_replica"] = sr
    result.add("Storage Replica", "ok", "known", "configured" if sr else "none")


def _cau(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    state = client.cau_run_state()
    result.add("no CAU run in progress", "ok" if state == "RunNotInProgress" else "blocking", "RunNotInProgress",
               state, "let the CAU run end, or stop it (Stop-CauRun), before upgrading")


def _second_hop(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    refused = client.second_hop()
    result.add("second hop", "ok" if refused is None else "warning", "a node's session reaches the other nodes",
               refused or "reaches them", "Test-Cluster (post-OS) needs it: auth credssp (Enable-WSManCredSSP "
               "-Role Server), resource-based constrained delegation, or validation run on a node by hand")
    result.twin.setdefault("knobs", {})["second_hop"] = "allowed" if refused is None else "denied"


def _prerequisites(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    pre = Preflight()
    prerequisites(client, nodes, pre)
    for f in pre.findings:
        result.add(f.check, "ok" if f.ok else "blocking", "as the procedure needs", f.detail, f.detail)


def _media(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    for node, build in client.each(lambda n: client.media_build(n, options.setup_path), nodes).items():
        if isinstance(build, RemoteError):
            result.add(f"{node}: setup media", "blocking", f"install.wim under {options.setup_path}", str(build),
                       "copy the extracted 23H2 media to the same path on every node")
        else:
            reached = options.build_reached(str(build))
            result.twin["media_build"] = str(build)
            result.add(f"{node}: setup media", "ok" if reached else "blocking",
                       f"{options.goal_build} or newer", str(build), "stage media of the target build")


def _language(client: ClusterClient, options: RunOptions, result: Survey, nodes: list[str]) -> None:
    rules = client.session(nodes[0]).run(Cmdlet("Get-NetFirewallRule", {"Group": REMOTE_SHUTDOWN_GROUP})).objects
    shown = str(rules[0].get("DisplayGroup")) if rules else ""
    language = "en-US" if not shown or shown == ENGLISH_GROUP else "de-DE"
    result.add("display language", "ok", "any (names are read by their indirect strings)",
               f"the Remote Shutdown group reads {shown!r}" if shown else "no rule group found")
    result.twin.setdefault("knobs", {})["display_language"] = language


def _form(result: Survey, check: str, expected: str, observed: str, ok: bool) -> None:
    result.add(check, "ok" if ok else "blocking", expected, observed,
               "report this answer (raw/ in the survey's folder): the parser expects another form")


def _parsed(result: Survey, check: str, objects: list[Any], parse_one: Callable[[Any], Any]) -> list[Any]:
    try:
        parsed = [parse_one(o) for o in objects]
    except (KeyError, ValueError, TypeError) as e:
        result.add(check, "blocking", "the forms the parser reads", f"{type(e).__name__}: {e}",
                   "report this answer (raw/ in the survey's folder)")
        return []
    result.add(check, "ok", "the forms the parser reads", f"{len(parsed)} read")
    return parsed


# --- the twin -------------------------------------------------------------------------------------------------------
def twin_scenario(client: ClusterClient, found: Survey, options: RunOptions, builds: dict[str, str]) -> dict[str, Any]:
    """A scenario of this cluster (hciupgrade/sim/scenario.py) from what the survey read: `hci-upgrade demo
    --scenario twin.yaml` rehearses the upgrade on it."""
    twin = found.twin
    common = max(set(builds.values()), key=list(builds.values()).count) if builds else "10.0.20349.2966"
    nodes = []
    for node in client.sessions:
        entry: dict[str, Any] = {"name": node}
        if builds.get(node) and builds[node] != common:
            entry["build"] = builds[node]
        nodes.append(entry)
    cluster: dict[str, Any] = {
        "name": client.name, "nodes": nodes, "vms": twin.get("vms", []), "volumes": twin.get("volumes") or
        [{"name": "Volume01"}], "build": common,
        "target_build": twin.get("media_build") or _full_build(options.release.media_build),
        "functional_level": twin.get("functional_level", 11), "pool_version": twin.get("pool_version", 27)}
    return {"cluster": cluster, "knobs": twin.get("knobs", {}), "time_factor": 1000}


def _full_build(target: str) -> str:
    parts = target.split(".")
    return target if len(parts) == 4 else ".".join(parts + ["0"] * (4 - len(parts)))
