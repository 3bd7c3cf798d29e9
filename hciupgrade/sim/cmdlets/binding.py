"""How a call reaches a handler, as PowerShell binds it: the registry of cmdlets, parameter binding (unknown
parameter: ParameterBindingException; unknown cmdlet: CommandNotFoundException), -ErrorAction, the output and
error objects, and the helpers every area shares."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hciupgrade.psenums import (
    NodeState,
)
from hciupgrade.sim.cluster import (
    ERROR_CLUSTER_SPACE_DEGRADED,
    Node,
    Refused,
    SimCluster,
)

SWITCH = object()  # a switch parameter given without a value

CLUSTER_NS = "Microsoft.FailoverClusters.PowerShell"
CIM = "Microsoft.Management.Infrastructure.CimInstance"
SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "scripts"


def cim_types(namespace: str, cls: str) -> list[str]:
    return [f"{CIM}#{namespace}/{cls}", f"{CIM}#{cls}", CIM, "System.Object"]


@dataclass
class Out:
    """One output object: .NET type names, adapted properties, extended (note/script) properties."""

    type_names: list[str]
    props: dict[str, Any]
    extended: dict[str, Any] = field(default_factory=dict)
    to_string: str | None = None


@dataclass
class ErrorOut:
    """An error record as a real node writes it: message, FullyQualifiedErrorId, category, target, the exception's
    type and HResult; `activity` is the cmdlet that wrote it (set by
    `invoke` when a handler leaves it empty), as CategoryInfo.Activity and InvocationInfo.MyCommand show."""

    message: str
    fq_error_id: str
    category: str = "NotSpecified"
    target: str | None = None
    exception_type: str = "System.Management.Automation.RuntimeException"
    hresult: int = -2146233087
    activity: str | None = None


class Terminating(Exception):
    """A terminating error: the pipeline ends Failed with this record."""

    def __init__(self, error: ErrorOut) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Invocation:
    sim: SimCluster
    node: str  # the node whose endpoint received the call
    caller: str  # the authenticated user
    params: dict[str, Any]
    input: list[Out]
    errors: list[ErrorOut] = field(default_factory=list)
    command: str = ""  # the cmdlet's name, for error ids


Handler = Callable[[Invocation], list[Out]]


@dataclass(frozen=True)
class Spec:
    handler: Handler
    params: frozenset[str]
    positional: tuple[str, ...] = ()
    command_class: str = ""


REGISTRY: dict[str, Spec] = {}


def cmdlet(name: str, params: str = "", positional: tuple[str, ...] = (), command_class: str = ""):
    common = {"ErrorAction", "WarningAction", "Verbose", "Debug", "WhatIf", "Confirm", "Cluster", "InputObject"}

    def register(fn: Handler) -> Handler:
        REGISTRY[name.lower()] = Spec(fn, frozenset(params.split()) | common, positional, command_class or name)
        return fn

    return register


# --- binding ---------------------------------------------------------------------------------------------------
def bind(spec: Spec, name: str, raw: list[tuple[str | None, Any]]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    positional = list(spec.positional)
    allowed = {p.lower(): p for p in spec.params}
    for pname, value in raw:
        if pname is None:
            if not positional:
                raise Terminating(ErrorOut(
                    f"A positional parameter cannot be found that accepts argument '{value}'.",
                    f"PositionalParameterNotFound,{spec.command_class}", "InvalidArgument",
                    exception_type="System.Management.Automation.ParameterBindingException"))
            bound[positional.pop(0)] = value
            continue
        canonical = allowed.get(pname.lower())
        if canonical is None:
            raise Terminating(ErrorOut(
                f"A parameter cannot be found that matches parameter name '{pname}'.",
                f"NamedParameterNotFound,{spec.command_class}", "InvalidArgument",
                exception_type="System.Management.Automation.ParameterBindingException"))
        bound[canonical] = SWITCH if value is None else value
    return bound


ACTION_PREFERENCES = {"continue", "stop", "silentlycontinue", "ignore", "inquire", "suspend"}


def invoke(sim: SimCluster, node: str, caller: str, commands: list[tuple[str, list[tuple[str | None, Any]]]],
           ) -> tuple[list[Out], list[ErrorOut]]:
    """Run one statement (a pipeline of commands) on `node`. Raises Terminating for a terminating error.

    A handler writes a non-terminating error by appending to `inv.errors` and goes on; -ErrorAction decides what
    becomes of it, as in PowerShell: Stop makes the first one terminating, SilentlyContinue and Ignore hide it,
    Continue (the default) writes it to the error stream. A terminating error (Terminating, Refused) is not
    affected by -ErrorAction."""
    errors: list[ErrorOut] = []
    data: list[Out] = []
    with sim.lock:
        sim.advance()
        for i, (name, raw) in enumerate(commands):
            spec = REGISTRY.get(name.lower())
            if spec is None:
                raise Terminating(ErrorOut(
                    f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or "
                    "operable program. Check the spelling of the name, or if a path was included, verify that "
                    "the path is correct and try again.",
                    "CommandNotFoundException", "ObjectNotFound", target=name,
                    exception_type="System.Management.Automation.CommandNotFoundException", activity=name))
            mine: list[ErrorOut] = []
            params = bind(spec, name, raw)
            action = error_action(spec, params)
            inv = Invocation(sim, node, caller, params, data if i else [], mine, spec.command_class)
            try:
                data = spec.handler(inv)
            except Refused as refused:
                raise Terminating(cluster_error(refused, spec)) from None
            except Terminating as terminating:
                terminating.error.activity = terminating.error.activity or spec.command_class
                raise
            for error in mine:
                error.activity = error.activity or spec.command_class
            if mine and action == "stop":
                raise Terminating(mine[0])
            if action not in ("silentlycontinue", "ignore"):
                errors += mine
    return data, errors


def error_action(spec: Spec, params: dict[str, Any]) -> str:
    value = params.get("ErrorAction")
    if value is None:
        return "continue"
    text = str(value).lower()
    if text not in ACTION_PREFERENCES:
        raise Terminating(ErrorOut(
            f"Cannot bind parameter 'ErrorAction'. Cannot convert value \"{value}\" to type "
            "\"System.Management.Automation.ActionPreference\". Error: \"Unable to match the identifier name "
            f"{value} to a valid enumerator name. Specify one of the following enumerator names and try again:"
            "\r\nSilentlyContinue, Stop, Continue, Inquire, Ignore, Suspend\"",
            f"CannotConvertArgumentNoMessage,{spec.command_class}", "InvalidArgument",
            exception_type="System.Management.Automation.ParameterBindingException"))
    return text


def hresult_of(code: int) -> int:
    """The signed HResult a .NET exception carries for a Win32 code (HRESULT_FROM_WIN32) or an HRESULT."""
    value = code if code >= 0x10000 else 0x80070000 | code
    return value - 0x100000000 if value >= 0x80000000 else value


def cluster_error(refused: Refused, spec: Spec) -> ErrorOut:
    return ErrorOut(
        refused.args[0], f"{spec.command_class},{command_class(spec.command_class)}",
        "ResourceUnavailable" if refused.code == ERROR_CLUSTER_SPACE_DEGRADED else "InvalidOperation",
        target=refused.node, exception_type=f"{CLUSTER_NS}.ClusterCmdletException", hresult=hresult_of(refused.code))


def names_param(inv: Invocation, key: str = "Name") -> list[str] | None:
    value = inv.params.get(key)
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# What a failover-cluster cmdlet answers on a node whose cluster service is not running (down, joining): the
# endpoint mapper has no cluster endpoint (EPT_S_NOT_REGISTERED, 1753), or RPC is unavailable (1722).
CLUSTER_DOWN_ERRORS = {
    "ClusterEndpointNotRegistered": ("There are no more endpoints available from the endpoint mapper", 1753),
    "ClusterRpcConnection": ("The RPC server is unavailable", 1722),  # [INFER] the second line's text
}


def command_class(cmdlet_name: str) -> str:
    """The .NET class of a FailoverClusters cmdlet: Get-ClusterNode -> ...GetClusterNodeCommand."""
    return f"{CLUSTER_NS}.{cmdlet_name.replace('-', '')}Command"


def require_cluster_node(inv: Invocation) -> None:
    node = inv.sim.nodes[inv.node]
    if node.state not in (NodeState.Up, NodeState.Paused):
        kind = inv.sim.knobs.cluster_down_error
        detail, code = CLUSTER_DOWN_ERRORS[kind]
        raise Terminating(ErrorOut(
            "The cluster service is not running.  Make sure that the service is running on all nodes in the "
            f"cluster.\n    {detail}", f"{kind},{command_class(inv.command)}", "ConnectionError",
            exception_type=f"{CLUSTER_NS}.ClusterCmdletException", hresult=hresult_of(code)))


def select_nodes(inv: Invocation) -> list[Node]:
    wanted = names_param(inv)
    if inv.input and wanted is None:
        wanted = [o.props["Name"] for o in inv.input if "Name" in o.props]
    if wanted is None:
        return list(inv.sim.nodes.values())
    found = []
    for name in wanted:
        try:
            found.append(inv.sim.node(name))
        except KeyError:
            inv.errors.append(ErrorOut(
                f"The cluster node '{name}' was not found.", f"ClusterObjectNotFound,{command_class(inv.command)}",
                "ObjectNotFound", target=name, exception_type=f"{CLUSTER_NS}.ClusterCmdletException"))
    return found


def cluster_node(sim: SimCluster, node: Node) -> Out:
    major, minor, build, _ = node.build.split(".")
    return Out(
        [f"{CLUSTER_NS}.ClusterNode", f"{CLUSTER_NS}.ClusterObject", "System.Object"],
        {
            "Name": node.name,
            "Id": str(list(sim.nodes).index(node.name) + 1),
            "State": node.state,
            "StatusInformation": node.status_information,
            "DrainStatus": node.drain_status,
            "DrainTarget": 0xFFFFFFFF,
            "BuildNumber": int(build),
            "MajorVersion": int(major),
            "MinorVersion": int(minor),
            "CSDVersion": "",
            "NodeWeight": 1,
            "DynamicWeight": 1 if node.state == NodeState.Up else 0,
            "FaultDomain": f"Site:Default;Rack:Default;Chassis:Default;Node:{node.name}",
            "Manufacturer": "Contoso",
            "Model": "HCI-Node 2U",
            "SerialNumber": hashlib.sha1(node.name.encode()).hexdigest()[:10].upper(),
            "Cluster": sim.name,
        },
        to_string=node.name,
    )


