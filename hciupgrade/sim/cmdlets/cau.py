"""Cluster-Aware Updating's cmdlets (the ClusterAwareUpdating module) and hci-upgrade's packaged script that starts
CAU's run, over the simulated CAU (sim/cau.py). Output forms from reference/domain.md §5.4 (Get-CauRun: a RunState
value first, then the CauRun), §5.5 (Get-CauReport's CauReport: ClusterResult with RunId, StartTimestamp, Status,
ErrorRecordData.FullyQualifiedErrorId, NodeResults with Node.NodeName, Status, ErrorRecordData, InstallResults,
NodeRebootResult), §5.6 (Test-CauSetup: a CauBpaProgress; the findings from Get-BpaResult in the generic BPA
shape) and §5.1 (Get-CauClusterRole without a role: its documented error; with one, Name/Value pairs [INFER])."""

from __future__ import annotations

from typing import Any

from hciupgrade.psenums import CauRunState
from hciupgrade.sim.cau import CAU, HOTFIX, NO_ROLE, ROLLING_UPGRADE, CauSettings, UpdatingRun
from hciupgrade.sim.cluster import Refused
from hciupgrade.sim.cmdlets.binding import SCRIPTS_DIR, ErrorOut, Invocation, Out, Terminating, cmdlet
from hciupgrade.sim.cmdlets.failover import second_hop_denied
from hciupgrade.sim.cmdlets.scripts import _deny, _newer_fence, _script_digest, packaged

CAU_NS = "Microsoft.ClusterAwareUpdating"
BPA_MODEL = "Microsoft/Windows/ClusterAwareUpdating"  # [UNVERIFIED] the CAU BPA model's id (§5.6)


def _time(inv: Invocation, t: float | None) -> str | None:
    return None if t is None else inv.sim.clock.datetime_at(t).isoformat()


def _node_name(name: str) -> Out:
    return Out([f"{CAU_NS}.CauNode", "System.Object"], {"NodeName": name}, to_string=name)


def _error_record(message: str | None, error_id: str | None = None) -> Out | None:
    if message is None and error_id is None:
        return None
    return Out([f"{CAU_NS}.ErrorRecordData", "System.Object"],
               {"FullyQualifiedErrorId": error_id or "NodeUpdateFailed",
                "ExceptionData": f"System.Management.Automation.RemoteException: {message}" if message else None},
               to_string=message or error_id or "")


def _node_result(inv: Invocation, node: dict[str, Any], plugin: str) -> Out:
    succeeded = [u for u in node["updates"] if u["UpdateResultCode"] == "Succeeded"]
    failed = [u for u in node["updates"] if u["UpdateResultCode"] != "Succeeded"]
    installs = [Out([f"{CAU_NS}.UpdateInstallResult", "System.Object"], dict(u), to_string=u["UpdateTitle"])
                for u in node["updates"]]
    return Out([f"{CAU_NS}.NodeResult", "System.Object"], {
        "Node": _node_name(node["name"]), "Status": node["status"], "ErrorRecordData": _error_record(node["error"]),
        # the RollingUpgradePlugin reports 0 succeeded updates for a node that succeeded (§5.4, Microsoft's sample)
        "NumberOfSucceededUpdates": 0 if plugin == ROLLING_UPGRADE else len(succeeded),
        "NumberOfFailedUpdates": len(failed), "InstallResults": installs,
        "NodeRebootResult": Out([f"{CAU_NS}.NodeRebootResult", "System.Object"], {
            "RebootSummaryResult": node["reboot"] or "NotRequired", "BootType": "FullBoot",
            "SoftBootStatus": "NotEnabled"}) if node["reboot"] else None,
    }, to_string=node["name"])


def _cau_run(inv: Invocation, run: UpdatingRun) -> Out:
    report = inv.sim.cau.report(run)
    pending = [n for n in run.nodes.values() if n.result is None]
    notifications = [Out([f"{CAU_NS}.NodeStatusNotification", "System.Object"],
                         {"Node": _node_name(n.name), "Status": n.status, "Timestamp": _time(inv, n.since)},
                         to_string=f"{n.name}: {n.status.name}") for n in pending]
    orchestrator = run.orchestrator
    if not inv.sim.nodes[orchestrator].os_running:  # the role's orchestrator fails over when its node restarts
        orchestrator = next((n.name for n in inv.sim.nodes.values() if n.os_running), orchestrator)
    return Out([f"{CAU_NS}.CauRun", "System.Object"], {
        "RunId": run.run_id, "RunStartTime": _time(inv, run.started), "CurrentOrchestrator": orchestrator,
        "CancelPending": run.cancel_pending, "NodeStatusNotifications": notifications,
        "NodeResults": [_node_result(inv, n, run.settings.plugin) for n in report["nodes"] if n["name"] not in
                        {p.name for p in pending}]}, to_string=run.run_id)


def run_objects(inv: Invocation) -> list[Any]:
    cau = inv.sim.cau
    out: list[Any] = [cau.state]  # an enum value on the output stream, as the real cmdlet writes it
    if cau.state == CauRunState.RunInProgress and cau.run is not None and cau.run.status is None:
        out.append(_cau_run(inv, cau.run))
    elif cau.state != CauRunState.RunNotInProgress:  # a run left behind (knob, or a canceled one)
        out.append(Out([f"{CAU_NS}.CauRun", "System.Object"], {
            "RunId": cau.run.run_id if cau.run else "6f1c2a9e-3d52-4c1b-9a8e-0c7d2b1e4f10",
            "RunStartTime": _time(inv, cau.run.started) if cau.run else "2026-11-20T01:35:39",
            "CurrentOrchestrator": next(iter(inv.sim.nodes)), "CancelPending": False,
            "NodeStatusNotifications": [], "NodeResults": []}, to_string=""))
    return out


@cmdlet("Get-CauRun", "ClusterName Credential ShowClusterNodeState WaitForCompletion WaitForStart",
        positional=("ClusterName",))
def get_cau_run(inv: Invocation) -> list[Any]:
    """A RunState value first, then the CauRun when a run exists (§5.4)."""
    return run_objects(inv)


@cmdlet("Get-CauReport", "ClusterName Credential Detailed Last StartDate EndDate Report", positional=("ClusterName",))
def get_cau_report(inv: Invocation) -> list[Out]:
    """The runs' reports, newest last; -Last: only the newest; -Detailed: CauReport (else CauReportSummary)."""
    reports = inv.sim.cau.reports[-1:] if "Last" in inv.params else inv.sim.cau.reports
    out = []
    for r in reports:
        summary = {"RunId": r["run_id"], "StartTimestamp": _time(inv, r["started"]), "Status": r["status"],
                   "NodesCount": len(r["nodes"])}
        if "Detailed" not in inv.params:
            out.append(Out([f"{CAU_NS}.CauReportSummary", "System.Object"], summary, to_string=r["run_id"]))
            continue
        result = Out([f"{CAU_NS}.ClusterResult", "System.Object"], {
            "RunId": r["run_id"], "StartTimestamp": _time(inv, r["started"]), "Status": r["status"],
            "ErrorRecordData": _error_record(None, r["error_id"]) if r["error_id"] else None,
            "NodeResults": [_node_result(inv, n, r["plugin"]) for n in r["nodes"]]}, to_string=r["status"].name)
        out.append(Out([f"{CAU_NS}.CauReport", "System.Object"], {
            "ClusterName": inv.sim.name, "Plugin": [r["plugin"]], "ClusterResult": result,
            "RunEndTimestamp": _time(inv, r["ended"])}, to_string=r["run_id"]))
    return out


@cmdlet("Stop-CauRun", "ClusterName Credential Wait Force", positional=("ClusterName",))
def stop_cau_run(inv: Invocation) -> list[Out]:
    cau = inv.sim.cau
    if cau.run is None or cau.run.status is not None:
        raise Terminating(ErrorOut("There is no Updating Run in progress on the cluster.", "NoRunInProgress,"
                                   f"{CAU_NS}.Commands.StopCauRunCommand", "InvalidOperation",
                                   exception_type="System.InvalidOperationException"))  # [UNVERIFIED] text
    cau.stop(by=inv.caller)
    return []


@cmdlet("Invoke-CauRun", "ClusterName Credential CauPluginName CauPluginArguments MaxFailedNodes MaxRetriesPerNode "
        "NodeOrder RequireAllNodesOnline RebootTimeoutMinutes PreUpdateScript PostUpdateScript StopAfter WarnAfter "
        "EnableFirewallRules FailbackMode ForceSelfUpdate ForceRecovery ClearCorruptReports Force",
        positional=("ClusterName",))
def invoke_cau_run(inv: Invocation) -> list[Out]:
    """-ForceRecovery clears a run left behind. An updating run from a remote session is not modelled: the real
    cmdlet stays attached for the whole run and belongs on a coordinator outside the cluster (§5.1)."""
    if "ClearCorruptReports" in inv.params:  # only on 24H2+ CAU engines; these nodes run 22H2/23H2 (§5.2)
        raise Terminating(ErrorOut("A parameter cannot be found that matches parameter name 'ClearCorruptReports'.",
                                   "NamedParameterNotFound,Microsoft.ClusterAwareUpdating.Commands.InvokeCauRunCommand",
                                   "InvalidArgument",
                                   exception_type="System.Management.Automation.ParameterBindingException"))
    if "ForceRecovery" in inv.params:
        inv.sim.cau.recover(by=inv.caller)
        return []
    raise Terminating(ErrorOut("The simulator does not host Invoke-CauRun's coordinator: start CAU's run through "
                               "its clustered role (Start-CauUpdatingRun.ps1).", "NotModelled", "NotImplemented"))


@cmdlet("Get-CauClusterRole", "ClusterName Credential", positional=("ClusterName",))
def get_cau_cluster_role(inv: Invocation) -> list[Out]:
    role = inv.sim.cau.role
    if role is None:
        inv.errors.append(ErrorOut(NO_ROLE, f"ClusterRoleNotFound,{CAU_NS}.Commands.GetCauClusterRoleCommand",
                                   "ObjectNotFound", exception_type="System.InvalidOperationException"))
        return []
    s: CauSettings = role["settings"]
    pairs = {"ResourceGroupName": role["GroupName"], "Status": "Online", "CauPluginName": s.plugin,
             "MaxFailedNodes": s.max_failed_nodes, "MaxRetriesPerNode": s.max_retries_per_node,
             "RebootTimeoutMinutes": s.reboot_timeout_minutes, "DaysOfWeek": "Sunday", "WeeksOfMonth": "4"}
    return [Out(["System.Collections.DictionaryEntry", "System.Object"], {"Name": k, "Value": v}, to_string=k)
            for k, v in pairs.items()]


@cmdlet("Remove-CauClusterRole", "ClusterName Credential Force", positional=("ClusterName",))
def remove_cau_cluster_role(inv: Invocation) -> list[Out]:
    if inv.sim.cau.role is None:
        raise Terminating(ErrorOut(NO_ROLE, f"ClusterRoleNotFound,{CAU_NS}.Commands.RemoveCauClusterRoleCommand",
                                   "ObjectNotFound", exception_type="System.InvalidOperationException"))
    inv.sim.cau.remove_role(by=inv.caller)
    return []


BPA_RULES = (  # (title, why it fails, resolution): the rules of cluster-aware-updating-requirements.md (§5.6)
    ("The Remote Shutdown firewall rule group should be enabled on each node",
     "remote_shutdown_rule", "Enable the 'Remote Shutdown' rule group on each node, or run with "
                             "-EnableFirewallRules."),
    ("Automatic Updates should not be configured to automatically install updates on any failover cluster node",
     "auto_update", "Set Automatic Updates to notify only (AUOptions 2 or 3), or turn them off (NoAutoUpdate 1)."),
)


@cmdlet("Test-CauSetup", "ClusterName Credential", positional=("ClusterName",))
def test_cau_setup(inv: Invocation) -> list[Out]:
    """Runs the CAU BPA model; the findings are read with Get-BpaResult (§5.6)."""
    return [Out([f"{CAU_NS}.CauBpaProgress", "System.Object"], {"ModelId": BPA_MODEL, "Success": True},
                to_string=BPA_MODEL)]


@cmdlet("Get-BpaResult", "ModelId", positional=("ModelId",))
def get_bpa_result(inv: Invocation) -> list[Out]:
    out = []
    for number, (title, fact, resolution) in enumerate(BPA_RULES, 1):
        bad = [n.name for n in inv.sim.scenario.cluster.nodes
               if (fact == "remote_shutdown_rule" and not n.remote_shutdown_rule)
               or (fact == "auto_update" and n.auto_update == "install" and not n.no_auto_update)]
        out.append(Out(["Microsoft.BestPractices.CoreInterface.Result", "System.Object"], {
            "ResultNumber": number, "ModelId": BPA_MODEL, "RuleId": number, "ComputerName": inv.sim.name,
            "Severity": "Error" if bad else "Information", "Category": "Configuration" if bad else "Compliant",
            "Title": title, "Problem": f"Not so on {', '.join(bad)}." if bad else None,
            "Resolution": resolution if bad else None, "Compliance": None, "Excluded": False}, to_string=title))
    return out


def _settings(params: dict[str, Any]) -> CauSettings:
    plugin = str(params["Plugin"])
    arguments = {"WuConnected": "false", "PathToSetupMedia": str(params.get("PathToSetupMedia", "")),
                 "UpdateClusterFunctionalLevel": "false"} if plugin == ROLLING_UPGRADE else \
        {"HotfixRootFolderPath": str(params.get("HotfixRootFolderPath", "")), "RequireSmbEncryption": "true"}
    order = params.get("NodeOrder")

    def number(name: str) -> float | None:
        return float(params[name]) if name in params else None

    return CauSettings(
        plugin, arguments, max_failed_nodes=int(params["MaxFailedNodes"]) if "MaxFailedNodes" in params else None,
        max_retries_per_node=int(params.get("MaxRetriesPerNode", 3)),
        node_order=[str(n) for n in (order if isinstance(order, list) else [order])] if order else None,
        require_all_nodes_online="RequireAllNodesOnline" in params,
        reboot_timeout_minutes=float(params.get("RebootTimeoutMinutes", 15)),
        failback=str(params.get("FailbackMode", "Immediate")),
        pre_update_script=params.get("PreUpdateScript"), post_update_script=params.get("PostUpdateScript"),
        stop_after_minutes=number("StopAfterMinutes"), warn_after_minutes=number("WarnAfterMinutes"),
        suspend_timeout_minutes=number("SuspendClusterNodeTimeoutMinutes") or 60,
        repair_timeout_minutes=number("WaitForStorageRepairTimeoutMinutes"))


@packaged("Start-CauUpdatingRun.ps1")
def start_cau_updating_run(inv: Invocation) -> list[Any]:
    """The script's steps: ownership; a run in progress returned as it is; the role added (or ours
    reconfigured; another's refused); -UpdateNow; Get-CauRun."""
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    cau = inv.sim.cau
    if cau.state != CauRunState.RunNotInProgress:
        return run_objects(inv)
    if inv.sim.knobs.second_hop == "denied":  # the role's computer object and the other nodes: a second hop
        other = next(n for n in inv.sim.nodes if n.lower() != inv.node.lower())
        raise Terminating(second_hop_denied(inv, other))
    settings, group = _settings(inv.params), str(inv.params.get("GroupName", "HciUpgrade-CAU"))
    if settings.plugin not in (ROLLING_UPGRADE, HOTFIX):
        raise Terminating(ErrorOut(f"Cannot validate argument on parameter 'Plugin': {settings.plugin}",
                                   "ParameterArgumentValidationError", "InvalidData"))
    if cau.role is None:
        cau.add_role(settings, group, by=inv.caller)
    elif cau.role["GroupName"] == group:
        cau.set_role(settings, by=inv.caller)
    else:
        raise Terminating(ErrorOut(
            f"The cluster has a CAU clustered role configured by someone else ({cau.role['GroupName']}): its "
            "settings are not hci-upgrade's to change. Remove it (Remove-CauClusterRole), or use Engine: "
            "hci-upgrade.", "CauRoleNotOurs", "ResourceExists", target=cau.role["GroupName"],
            exception_type="System.InvalidOperationException"))
    try:
        cau.start(settings, by=CAU)
    except Refused as e:
        raise Terminating(ErrorOut(str(e.args[0]), "CauRunNotStarted", "InvalidOperation", target=e.node,
                                   exception_type="System.InvalidOperationException")) from None
    return run_objects(inv)



CAU_SCRIPTS_FOLDER = r"C:\ProgramData\hci-upgrade\cau"
NODE_SCRIPTS = {_script_digest((SCRIPTS_DIR / "cau" / name).read_text()): name
                for name in ("CauPreUpdate-StopWorkloads.ps1", "CauPostUpdate-StartWorkloads.ps1")}


@packaged("Install-CauUpdateScripts.ps1")
def install_cau_update_scripts(inv: Invocation) -> list[Out]:
    """Both scripts written under ProgramData; the node then holds what their text is (known by its digest)."""
    node = inv.sim.nodes[inv.node]
    out = []
    for param, name in (("PreUpdateScript", "CauPreUpdate-StopWorkloads.ps1"),
                        ("PostUpdateScript", "CauPostUpdate-StartWorkloads.ps1")):
        text = str(inv.params.get(param, ""))
        path = f"{CAU_SCRIPTS_FOLDER}\\{name}"
        node.files[path.lower()] = NODE_SCRIPTS.get(_script_digest(text), "unknown")
        out.append(Out(["Selected.System.IO.FileInfo", "System.Management.Automation.PSCustomObject", "System.Object"],
                       {}, extended={"FullName": path, "Length": len(text.encode())}))
    return out
