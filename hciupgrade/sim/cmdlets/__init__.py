"""The cmdlets the simulated cluster answers, with their real names, parameters, output types and errors, by area:
binding (how a call reaches its handler), failover, cau (Cluster-Aware Updating), storage, node, scripts (the
packaged scripts and the ownership they prove), prerequisites (the preflight's one read a node), hyperv, readiness.
Each handler binds its parameters as PowerShell does, asks the state machine (sim/cluster.py) for every change, and
returns `Out` objects whose type names and properties match the real ones (reference/domain.md §3). No handler
changes state or writes the event log itself: SimCluster does, and can refuse. Enum values are psenums members;
pstypes.py turns them into .NET enums on the wire. Storage objects are CIM instances: the raw number is the adapted
property and the Storage module's type data adds the enum name as an extended one, as on a real node."""

from hciupgrade.sim.cmdlets import (  # noqa: F401 - they register
    cau,
    failover,
    hyperv,
    node,
    prerequisites,
    readiness,
    scripts,
    storage,
)
from hciupgrade.sim.cmdlets.binding import ErrorOut, Invocation, Out, Terminating, invoke
from hciupgrade.sim.cmdlets.scripts import invoke_script

__all__ = ["ErrorOut", "Invocation", "Out", "Terminating", "invoke", "invoke_script"]
