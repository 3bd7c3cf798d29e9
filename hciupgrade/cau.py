"""Cluster-Aware Updating as read and driven from hci-upgrade: Get-CauRun, Get-CauReport, Test-CauSetup's findings,
the start of CAU's run (its clustered role, Start-CauUpdatingRun.ps1), Stop-CauRun, and the Pre/PostUpdateScripts
that carry WorkloadPolicy shut-down into CAU's run. Forms from reference/domain.md §5.4 to §5.6; nothing here relies
on properties CAU does not have (RunPhase, CurrentNode, RunResult: §5.4's warning)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hciupgrade.cluster import ClusterClient
from hciupgrade.models import RunOptions
from hciupgrade.remote import SWITCH, Cmdlet, CmdletFailed, PackagedScript
from hciupgrade.remote.calls import SCRIPTS_DIR

ROLLING_UPGRADE = "Microsoft.RollingUpgradePlugin"
HOTFIX = "Microsoft.HotfixPlugin"
GROUP_NAME = "HciUpgrade-CAU"  # the CAU clustered role hci-upgrade adds, and removes when its run has ended
BPA_MODEL = "Microsoft/Windows/ClusterAwareUpdating"  # [UNVERIFIED] model id (§5.6)
SCRIPTS_FOLDER = r"C:\ProgramData\hci-upgrade\cau"
PRE_SCRIPT = SCRIPTS_FOLDER + r"\CauPreUpdate-StopWorkloads.ps1"
POST_SCRIPT = SCRIPTS_FOLDER + r"\CauPostUpdate-StartWorkloads.ps1"


@dataclass(frozen=True)
class NodeResult:
    node: str
    status: str  # Succeeded, Failed, ... (CAU's names)
    error: str | None = None
    updates: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CauRun:
    """Get-CauRun: its RunState, and while a run exists its id, orchestrator, each pending node's latest status
    (NodeStatusNotifications) and the nodes finished (NodeResults)."""

    state: str
    run_id: str | None = None
    orchestrator: str | None = None
    cancel_pending: bool = False
    statuses: dict[str, str] = field(default_factory=dict)  # node -> Waiting, Scanning, Installing, ...
    results: tuple[NodeResult, ...] = ()


@dataclass(frozen=True)
class CauReport:
    """Get-CauReport -Last -Detailed: the run's end (Succeeded, PartiallyFailed, Failed, Canceled) and its nodes."""

    run_id: str
    status: str
    error_id: str | None
    nodes: tuple[NodeResult, ...]


def _name(value: Any) -> str:
    """A CAU node reference: an object with NodeName, or its text."""
    if isinstance(value, dict):
        return str(value.get("NodeName") or value.get("Name") or "")
    return str(value or "")


def _error(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, dict):
        text = value.get("ExceptionData") or value.get("FullyQualifiedErrorId")
        return str(text).removeprefix("System.Management.Automation.RemoteException: ") if text else None
    return str(value)


def _results(values: Any) -> tuple[NodeResult, ...]:
    return tuple(NodeResult(_name(r.get("Node")), str(r.get("Status")), _error(r.get("ErrorRecordData")),
                            tuple(u for u in r.get("InstallResults") or [] if isinstance(u, dict)))
                 for r in values or [] if isinstance(r, dict))


def parse_run(objects: list[Any]) -> CauRun:
    """Get-CauRun's objects, whatever their order: the RunState value (text) and the CauRun (a dict)."""
    state, run = "RunNotInProgress", None
    for obj in objects:
        if isinstance(obj, dict) and "RunId" in obj:
            run = obj
        elif isinstance(obj, str | int) and not isinstance(obj, bool):
            from hciupgrade.psenums import CauRunState, parse

            try:
                state = parse(CauRunState, obj).name
            except ValueError:
                continue
    if run is None:
        return CauRun(state)
    statuses = {_name(n.get("Node")): str(n.get("Status")) for n in run.get("NodeStatusNotifications") or []
                if isinstance(n, dict)}
    return CauRun(state, str(run.get("RunId")), str(run.get("CurrentOrchestrator") or "") or None,
                  bool(run.get("CancelPending")), statuses, _results(run.get("NodeResults")))


def read_run(client: ClusterClient) -> CauRun:
    return parse_run(client.query(Cmdlet("Get-CauRun", {"ClusterName": client.name})))


def last_report(client: ClusterClient) -> CauReport | None:
    objects = client.query(Cmdlet("Get-CauReport", {"ClusterName": client.name, "Last": SWITCH, "Detailed": SWITCH}))
    report = next((o for o in objects if isinstance(o, dict) and "ClusterResult" in o), None)
    if report is None:
        return None
    result = report["ClusterResult"] or {}
    error = result.get("ErrorRecordData")
    return CauReport(str(result.get("RunId")), str(result.get("Status")),
                     str(error.get("FullyQualifiedErrorId")) if isinstance(error, dict) else None,
                     _results(result.get("NodeResults")))


def setup_findings(client: ClusterClient) -> list[tuple[str, str, str | None]]:
    """Test-CauSetup (CAU's Best Practices Analyzer), then its findings: (title, severity, problem and fix) for
    each rule that is not Information."""
    client.query(Cmdlet("Test-CauSetup", {"ClusterName": client.name}))
    found = []
    for r in client.query(Cmdlet("Get-BpaResult", {"ModelId": BPA_MODEL})):
        if isinstance(r, dict) and str(r.get("Severity")) in ("Error", "Warning"):
            detail = " ".join(str(r[k]) for k in ("Problem", "Resolution") if r.get(k))
            found.append((str(r.get("Title")), str(r.get("Severity")), detail or None))
    return found


def plugin_for(options: RunOptions) -> str:
    return HOTFIX if options.update == "cumulative" else ROLLING_UPGRADE


def start_parameters(options: RunOptions, nodes: int) -> dict[str, Any]:
    """Start-CauUpdatingRun.ps1's parameters: the plug-in, its source, and CAU's options by their CAU names."""
    o = options
    params: dict[str, Any] = {"Plugin": plugin_for(o), "MaxRetriesPerNode": o.max_retries_per_node,
                              "RebootTimeoutMinutes": int(round(o.restart_timeout_minutes)),
                              "FailbackMode": o.failback, "MaxFailedNodes": o.failed_nodes_allowed(nodes),
                              "SuspendClusterNodeTimeoutMinutes": int(round(o.gate_timeout_minutes)),
                              "WaitForStorageRepairTimeoutMinutes": int(round(o.repair_timeout_minutes)),
                              "GroupName": GROUP_NAME}
    if o.update == "cumulative":
        params["HotfixRootFolderPath"] = o.hotfix_root_folder or ""
    else:
        params["PathToSetupMedia"] = o.setup_path
    if o.node_order:
        params["NodeOrder"] = list(o.node_order)
    if o.require_all_nodes_online:
        params["RequireAllNodesOnline"] = SWITCH
    if o.vm_policy == "shut-down":
        params["PreUpdateScript"], params["PostUpdateScript"] = PRE_SCRIPT, POST_SCRIPT
    else:
        for name, value in (("PreUpdateScript", o.pre_update_script), ("PostUpdateScript", o.post_update_script)):
            if value:
                params[name] = value
    # CAU's StopAfter: the option's, or the fleet's window less its margin, whichever ends first
    stops = [s for s in (o.stop_after.total_seconds() if o.stop_after else None,
                         o.window_seconds - o.window_margin_seconds if o.window_seconds else None) if s is not None]
    if stops:
        params["StopAfterMinutes"] = max(1, int(min(stops) // 60))
    if o.warn_after is not None:
        params["WarnAfterMinutes"] = max(1, int(o.warn_after.total_seconds() // 60))
    return params


def install_workload_scripts(client: ClusterClient, node: str) -> None:
    """WorkloadPolicy shut-down under CAU: hci-upgrade's Pre/PostUpdateScripts written on the node."""
    texts = {name: (SCRIPTS_DIR / "cau" / f"{name}-{what}.ps1").read_text()
             for name, what in (("CauPreUpdate", "StopWorkloads"), ("CauPostUpdate", "StartWorkloads"))}
    client.session(node).run(PackagedScript("Install-CauUpdateScripts.ps1", {
        "PreUpdateScript": texts["CauPreUpdate"], "PostUpdateScript": texts["CauPostUpdate"]}), timeout=120)


def start_run(client: ClusterClient, options: RunOptions) -> CauRun:
    """CAU's run started through its clustered role (or the run already in progress, returned as it is)."""
    params = start_parameters(options, len(client.sessions))
    return parse_run(client.act_anywhere("Start-CauUpdatingRun.ps1", params).objects)


def stop_run(client: ClusterClient) -> None:
    """Stop-CauRun: CAU ends its run at the node's next safe point."""
    client.act_on_cluster("Stop-CauRun", {"Force": SWITCH})


def remove_our_role(client: ClusterClient) -> bool:
    """The clustered role hci-upgrade added, removed once no run is in progress; another's is left. True if
    removed."""
    try:
        pairs = client.query(Cmdlet("Get-CauClusterRole", {"ClusterName": client.name}))
    except CmdletFailed:
        return False
    group = next((str(p.get("Value")) for p in pairs if isinstance(p, dict) and p.get("Name") == "ResourceGroupName"),
                 None)
    if group != GROUP_NAME:
        return False
    client.act_on_cluster("Remove-CauClusterRole", {"Force": SWITCH})
    return True
