"""The packaged scripts, known by their content as a real node only knows what it is sent, and the ownership
every owned script proves in the same call as its action (DESIGN.md invariant 8)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from hciupgrade.psenums import (
    DrainStatus,
    NodeState,
)
from hciupgrade.sim.cluster import (
    CUMULATIVE_UPDATE_TASK,
    FEATURE_UPDATE_TASK,
    FENCE_KEY,
    MARKER_KEY,
    Node,
    Refused,
    SimCluster,
)
from hciupgrade.sim.cmdlets.binding import (
    CLUSTER_NS,
    REGISTRY,
    SCRIPTS_DIR,
    ErrorOut,
    Invocation,
    Out,
    Spec,
    Terminating,
    cluster_error,
    cluster_node,
    command_class,
    invoke,
    require_cluster_node,
)
from hciupgrade.sim.cmdlets.failover import second_hop_denied
from hciupgrade.sim.cmdlets.node import _item_property, registry_values, scheduled_task
from hciupgrade.sim.cmdlets.storage import pool_version_text


# --- packaged scripts: known by their content, as a real node only knows what it is sent --------------------------
def _script_digest(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


PACKAGED: dict[str, Callable[[Invocation], list[Out]]] = {}
WAITING: set[str] = set()  # scripts that wait on the node (Start-Sleep): run without holding the simulator's lock


def packaged(filename: str, *, waits: bool = False):
    def register(fn: Callable[[Invocation], list[Out]]):
        digest = _script_digest((SCRIPTS_DIR / filename).read_text())
        PACKAGED[digest] = fn
        if waits:
            WAITING.add(digest)
        return fn

    return register


def _register_update_task(inv: Invocation, default_task: str, path_parameter: str) -> list[Out]:
    """Either Register-*UpdateTask.ps1: the task registered (a running one left alone), started with -Start."""
    name = str(inv.params.get("TaskName") or default_task)
    with owned(inv):
        inv.sim.register_update(inv.node, name, str(inv.params.get(path_parameter, "")), by=inv.caller)
        if "Start" in inv.params:
            inv.sim.start_update(inv.node, name, by=inv.caller)
    return [scheduled_task(inv, name)]


@packaged("Register-FeatureUpdateTask.ps1")
def register_feature_update_task(inv: Invocation) -> list[Out]:
    return _register_update_task(inv, FEATURE_UPDATE_TASK, "SetupPath")


@packaged("Register-CumulativeUpdateTask.ps1")
def register_cumulative_update_task(inv: Invocation) -> list[Out]:
    return _register_update_task(inv, CUMULATIVE_UPDATE_TASK, "PackagePath")


def invoke_script(sim: SimCluster, node: str, caller: str, text: str, raw: list[tuple[str | None, Any]],
                  ) -> tuple[list[Out], list[ErrorOut]]:
    handler = PACKAGED.get(_script_digest(text))
    if handler is None:
        raise Terminating(ErrorOut("The simulator runs only the scripts packaged with hci-upgrade.",
                                   "ScriptNotPackaged", "PermissionDenied"))
    params = {k: v for k, v in raw if k is not None}
    inv = Invocation(sim, node, caller, params, [], command="Script")
    if _script_digest(text) in WAITING:  # it takes the lock for each look, and sleeps without it
        return handler(inv), inv.errors
    with sim.lock:
        sim.advance()
        try:
            return handler(inv), inv.errors
        except Refused as refused:
            raise Terminating(cluster_error(refused, Spec(handler, frozenset(), (), "Script"))) from None


@packaged("Get-ClusterHealth.ps1")
def get_cluster_health(inv: Invocation) -> list[Out]:
    """Its four statements, each as the cmdlet alone answers (its errors terminating: the script says Stop)."""
    out: list[Out] = []
    for statement in (("Get-ClusterNode", []), ("Get-VirtualDisk", []), ("Get-StorageJob", []),
                      ("Get-StoragePool", [("IsPrimordial", False)])):
        data, errors = invoke(inv.sim, inv.node, inv.caller, [statement])
        if errors:
            raise Terminating(errors[0])
        out += data
    return out


def statement_or_error(inv: Invocation, name: str, params: list[tuple[str | None, Any]],
                       ) -> tuple[list[Out], Terminating | None]:
    """One statement of a packaged read as its cmdlet alone answers: its objects, and the error that ends it in a
    script run with $ErrorActionPreference = 'Stop' (a terminating one, or its first non-terminating one; none
    when -ErrorAction SilentlyContinue drops them), which the script's try/catch sees."""
    try:
        data, errors = invoke(inv.sim, inv.node, inv.caller, [(name, params)])
    except Terminating as e:
        return [], e
    return data, Terminating(errors[0]) if errors else None


@packaged("Get-NodePosition.ps1")
def get_node_position(inv: Invocation) -> list[Out]:
    """Its statements as the cmdlets alone answer: the build's key (Stop), the mark's and the task's reads
    SilentlyContinue (nothing written when missing), Get-ClusterNode in a try/catch (nothing when the node's cluster
    service does not run)."""
    def read(name: str, params: list[tuple[str | None, Any]], *, stop: bool = False) -> list[Out]:
        data, error = statement_or_error(inv, name, params)
        if error is not None and stop:
            raise error
        return data

    out = read("Get-ItemProperty", [("Path", r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion")], stop=True)
    out += read("Get-ItemProperty", [("Path", r"HKLM:\SOFTWARE\hci-upgrade"), ("ErrorAction", "SilentlyContinue")])
    out += read("Get-ClusterNode", [("Name", inv.params.get("Name"))])
    task = inv.params.get("TaskName")
    found = read("Get-ScheduledTask", [("TaskName", task), ("ErrorAction", "SilentlyContinue")]) if task else []
    if found:
        out += found + read("Get-ScheduledTaskInfo", [("TaskName", task)], stop=True)
    return out


ACTIVE_JOBS = {"New", "Starting", "Running", "Suspended", "ShuttingDown", "QueryPending", "Service"}


@packaged("Wait-StorageRepair.ps1", waits=True)
def wait_storage_repair(inv: Invocation) -> list[Out]:
    """Get-StorageJob every EverySeconds until no job is active; with -Settled, Get-ClusterHealth.ps1's four reads
    until, besides, every virtual disk and the pool are Healthy, each disk OK. What they read then."""
    settled = "Settled" in inv.params

    def done(out: list[Out]) -> bool:  # [string]$_.JobState and the like read the Storage module's type data
        def of(kind: str) -> list[dict[str, Any]]:
            return [o.extended for o in out if any(kind in t for t in o.type_names)]

        if any(job["JobState"].name in ACTIVE_JOBS for job in of("MSFT_StorageJob")):
            return False
        return not settled or (
            all(d["HealthStatus"].name == "Healthy" and all(s.name == "OK" for s in d["OperationalStatus"])
                for d in of("MSFT_VirtualDisk"))
            and all(p["HealthStatus"].name == "Healthy" for p in of("MSFT_StoragePool")))

    def read() -> list[Out]:
        if settled:
            return get_cluster_health(inv)
        data, errors = invoke(inv.sim, inv.node, inv.caller, [("Get-StorageJob", [])])
        if errors:
            raise Terminating(errors[0])
        return data

    return _wait_loop(inv, read, done)


@packaged("Get-StoragePoolVersion.ps1")
def get_storage_pool_version(inv: Invocation) -> list[Out]:
    """The S2D pool's name and the CIM number behind its friendly Version text."""
    sim = inv.sim
    return [Out(["System.Management.Automation.PSCustomObject", "System.Object"], {}, extended={
        "FriendlyName": f"S2D on {sim.name}", "Version": sim.pool_version,
        "VersionText": pool_version_text(sim.pool_version)})]


@packaged("Test-SecondHop.ps1")
def test_second_hop(inv: Invocation) -> list[Out]:
    """Invoke-Command from this node's session to another: refused without delegation (knob `second_hop`)."""
    target = str(inv.params.get("Name", ""))
    if inv.sim.knobs.second_hop == "denied" and target.lower() != inv.node.lower():
        raise Terminating(second_hop_denied(inv, target))
    return [Out(["System.Management.Automation.PSCustomObject", "System.Object"], {},
                extended={"ComputerName": target})]


def _wait_loop(inv: Invocation, read: Callable[[], list[Out]], done: Callable[[list[Out]], bool]) -> list[Out]:
    """A waiting script's loop on the simulated clock: `read` (under the simulator's lock) every EverySeconds
    (cluster seconds, slept in wall time at the scenario's factor, without the lock) until `done` or Seconds have
    passed; its last answer. A node that goes down mid-wait ends the call with what it read last (the next call
    finds the node gone, as a poll would); a terminating error of `read` ends it as the script's would."""
    sim = inv.sim
    seconds, every = float(inv.params.get("Seconds", 300)), float(inv.params.get("EverySeconds", 10))
    with sim.lock:
        sim.advance()
        start = sim.now()
        out = read()
    while not done(out):
        with sim.lock:
            if sim.now() - start >= seconds:
                break
        time.sleep(sim.clock.wall_seconds(every))
        with sim.lock:
            sim.advance()
            if not sim.reachable(inv.node):
                break
            out = read()
    return out


def _statement(inv: Invocation, name: str, params: list[tuple[str | None, Any]]) -> Callable[[], list[Out]]:
    """One statement of a waiting script, as the cmdlet alone answers (its non-terminating errors dropped)."""
    return lambda: invoke(inv.sim, inv.node, inv.caller, [(name, params)])[0]


@packaged("Wait-UpdateTask.ps1", waits=True)
def wait_update_task(inv: Invocation) -> list[Out]:
    """Get-ScheduledTaskInfo until the installer's result is no longer 0x41301/0x41303."""
    return _wait_loop(inv, _statement(inv, "Get-ScheduledTaskInfo", [("TaskName", inv.params.get("TaskName")),
                                                                  ("ErrorAction", "Stop")]),
                      lambda out: int(out[0].props["LastTaskResult"]) not in (0x41301, 0x41303))


@packaged("Wait-ClusterNodeState.ps1", waits=True)
def wait_cluster_node_state(inv: Invocation) -> list[Out]:
    """Get-ClusterNode -Name until the node's State is one of State."""
    wanted = inv.params.get("State")
    states = {str(s) for s in (wanted if isinstance(wanted, list) else [wanted])}
    return _wait_loop(inv, _statement(inv, "Get-ClusterNode", [("Name", inv.params.get("Name")),
                                                            ("ErrorAction", "Stop")]),
                      lambda out: bool(out) and out[0].props["State"].name in states)


@packaged("Invoke-NodeScript.ps1")
def invoke_node_script(inv: Invocation) -> list[Out]:
    with owned(inv):
        inv.sim.run_node_script(inv.node, str(inv.params.get("Path", "")), str(inv.params.get("Phase", "Pre")),
                                by=inv.caller)
    return []


# --- ownership: what every owned script proves in the same call as its action (DESIGN.md invariant 8) ------------
def _owner(inv: Invocation) -> tuple[str, int]:
    return str(inv.params.get("RunId", "")), int(inv.params.get("Fence") or 0)


def _deny(inv: Invocation, error_id: str, why: str) -> Terminating:
    """The refusal of the scripts' ownership prelude (its error id and text), logged as the simulator's own
    event; nothing else is done."""
    run, fence = _owner(inv)
    node = inv.sim.nodes[inv.node]
    inv.sim.fenced_out(node.name, f"run {run} (fence {fence}): {why}", by=inv.caller)
    return _script_error(f"{node.name} is not held by hci-upgrade run {run} (fence {fence}): {why}; nothing was "
                         "done.", error_id, "PermissionDenied", node.name, "script")


def _newer_fence(inv: Invocation) -> str | None:
    run, fence = _owner(inv)
    held = inv.sim.nodes[inv.node].fence
    if held is not None and int(held["Fence"]) > fence:
        return f"a newer run holds it: run {held['RunId']}, fence {held['Fence']}"
    return None


@contextmanager
def owned(inv: Invocation) -> Iterator[None]:
    """The scripts' prelude: refused with FencedOut when the node holds a newer fence than the caller's, with
    NotOurPause under -Marked when the node does not carry the caller's mark; otherwise what the body changes is
    logged as the caller's run and fence."""
    run, fence = _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    marker = inv.sim.nodes[inv.node].marker
    if "Marked" in inv.params and not (marker and marker.get("PausedByRun") == run):
        raise _deny(inv, "NotOurPause", "it does not carry this run's mark")
    with inv.sim.acting_for(run, fence):
        yield


OWNED_COMMANDS = ("Name", "TaskName", "FriendlyName", "StartupType", "Force", "RemoveResources")


@packaged("Invoke-OwnedCommand.ps1")
def invoke_owned_command(inv: Invocation) -> list[Out]:
    """The prelude, then the one cmdlet, splatted with the parameters bound to the script (-ErrorAction Stop)."""
    command = str(inv.params.get("Command", ""))
    params: list[tuple[str | None, Any]] = [(k, inv.params[k]) for k in OWNED_COMMANDS if k in inv.params]
    if command == "Update-StoragePool":
        params.append(("Confirm", False))
    with owned(inv):
        data, errors = invoke(inv.sim, inv.node, inv.caller, [(command, [*params, ("ErrorAction", "Stop")])])
    if errors:
        raise Terminating(errors[0])
    return data


@packaged("Set-UpgradeOwner.ps1")
def set_upgrade_owner(inv: Invocation) -> list[Out]:
    """The run's fence written on the node (refused when the node holds a newer one); -TakeOver moves a dead run's
    mark to the caller. Returns the fence key and the mark as Get-ItemProperty shows them."""
    run, fence = _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    with inv.sim.acting_for(run, fence):
        inv.sim.claim_fence(inv.node, run, fence, by=inv.caller)
        if inv.params.get("TakeOver"):
            inv.sim.take_over_mark(inv.node, str(inv.params["TakeOver"]), by=inv.caller)
    inv = replace(inv, command="Get-ItemProperty")  # its errors read as the cmdlet the script calls
    return [out for key in (FENCE_KEY, MARKER_KEY) if registry_values(inv, key) is not None
            for out in _item_property(inv, key)]


SUSPEND = "suspend-clusternode"


def _script_error(message: str, error_id: str, category: str, target: str, script: str) -> Terminating:
    """What $PSCmdlet.ThrowTerminatingError in a packaged script sends: its own error id and category."""
    return Terminating(ErrorOut(message, error_id, category, target=target,
                                exception_type="System.InvalidOperationException", activity=script))


def _mark_holder(mark: dict[str, str] | None) -> str:
    if not mark:
        return "someone else (no hci-upgrade mark)"
    return f"hci-upgrade run {mark.get('PausedByRun')} ({mark.get('PausedBy')}, {mark.get('PausedAt')})"


def _fenced_node(inv: Invocation) -> tuple[Invocation, Node, tuple[str, int], bool]:
    """What both node scripts do first: refuse an older fence, then find the named cluster node (errors read as
    Get-ClusterNode's, the cmdlet the script calls), and whether it carries the caller's mark."""
    run, fence = _owner(inv)
    newer = _newer_fence(inv)
    if newer:
        raise _deny(inv, "FencedOut", newer)
    inv = replace(inv, command="Get-ClusterNode")
    require_cluster_node(inv)
    node = _named_node(inv, str(inv.params.get("Name", "")))
    return inv, node, (run, fence), node.marker is not None and node.marker.get("PausedByRun") == run


@packaged("Suspend-NodeForUpgrade.ps1")
def suspend_node_for_upgrade(inv: Invocation) -> list[Out]:
    inv, node, (run, fence), ours = _fenced_node(inv)
    sim = inv.sim
    if not (node.state == NodeState.Up or (node.state == NodeState.Paused and ours)):
        raise _script_error(f"{node.name} is {node.state.name}, paused by {_mark_holder(node.marker)}; hci-upgrade "
                            "does not take over a pause that is not its own.", "NodeNotUp", "ResourceBusy",
                            node.name, "Suspend-NodeForUpgrade.ps1")
    others = [n for n in sim.nodes.values() if n.name != node.name and n.state != NodeState.Up]
    if others and not ours:  # the gate again, in the same call as the pause: nobody can slip in between
        raise _script_error(f"{node.name} is not paused: node {others[0].name} is {others[0].state.name}; one node "
                            "out of service at a time.", "OtherNodeNotUp", "ResourceUnavailable", node.name,
                            "Suspend-NodeForUpgrade.ps1")
    force = "ForceDrain" in inv.params
    if ours and node.drain_status == DrainStatus.InProgress and not force:
        return [cluster_node(sim, node)]  # a drain of ours in progress is only watched
    with sim.acting_for(run, fence):
        sim.claim_fence(node.name, run, fence, by=inv.caller)
        if not ours:
            sim.mark_pause(node.name, {"PausedByRun": run, "PausedBy": inv.caller,
                                       "PausedAt": sim.clock.datetime_at(sim.now()).isoformat(), "Fence": fence},
                           by=inv.caller)
        try:
            node = sim.suspend(node.name, drain=True, force_drain=force, by=inv.caller)
        except Refused as refused:
            if not ours:
                sim.clear_mark(node.name, by=inv.caller)
            raise Terminating(cluster_error(refused, REGISTRY[SUSPEND])) from None
    return [cluster_node(sim, node)]


@packaged("Resume-NodeAfterUpgrade.ps1")
def resume_node_after_upgrade(inv: Invocation) -> list[Out]:
    inv, node, (run, fence), ours = _fenced_node(inv)
    sim = inv.sim
    with sim.acting_for(run, fence):
        if node.state == NodeState.Paused:
            if not ours:
                raise _script_error(f"{node.name} is paused, but not by hci-upgrade run {run}; it is left paused.",
                                    "NotOurPause", "PermissionDenied", node.name, "Resume-NodeAfterUpgrade.ps1")
            failback = str(inv.params.get("Failback") or "Immediate")
            node = sim.resume(node.name, failback=failback, by=inv.caller)
        if ours:
            sim.clear_mark(node.name, by=inv.caller)
    return [cluster_node(sim, node)]


@packaged("Stop-NodeWorkloads.ps1")
def stop_node_workloads(inv: Invocation) -> list[Out]:
    """The list written first, then each running VM of the node shut down (Stop-VM -Force: a guest that does not
    shut down in time fails the call, the list kept)."""
    with owned(inv):
        try:
            names = inv.sim.stop_workloads(inv.node, by=inv.caller)
        except Refused as refused:
            raise _script_error(refused.args[0], "OperationFailed", "NotSpecified", inv.node,
                                "Stop-NodeWorkloads.ps1") from None
    return list(names)  # type: ignore[return-value]  # strings, as the script's [string[]] output


@packaged("Start-NodeWorkloads.ps1")
def start_node_workloads(inv: Invocation) -> list[Out]:
    with owned(inv):
        started, left = inv.sim.start_workloads(inv.node, by=inv.caller)
    if left:
        raise _script_error(f"{inv.node}: these VMs did not start: {'; '.join(left)}", "RuntimeException",
                            "OperationStopped", inv.node, "Start-NodeWorkloads.ps1")
    return list(started)  # type: ignore[return-value]


def _named_node(inv: Invocation, name: str) -> Node:
    try:
        return inv.sim.node(name)
    except KeyError:
        raise Terminating(ErrorOut(f"The cluster node '{name}' was not found.",
                                   f"ClusterObjectNotFound,{command_class('Get-ClusterNode')}", "ObjectNotFound",
                                   target=name, exception_type=f"{CLUSTER_NS}.ClusterCmdletException")) from None


