"""Safety predicates over a cluster snapshot: pure functions, no I/O. Each answer carries its reasons, so an
operator reads why a node may not leave service (DESIGN.md invariants 1 and 2)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hciupgrade.cluster import ClusterSnapshot
from hciupgrade.psenums import HealthStatus, JobState, NodeState

ACTIVE_JOB_STATES = {JobState.New, JobState.Starting, JobState.Running, JobState.Suspended, JobState.ShuttingDown,
                     JobState.QueryPending, JobState.Service}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return "ok" if self.ok else "; ".join(self.reasons)


def storage_busy(snapshot: ClusterSnapshot) -> list[str]:
    # a repair runs as one job a virtual disk, each named Repair: alike ones are counted, not repeated
    alike = Counter((j.name, j.percent, j.state.name) for j in snapshot.jobs if j.state in ACTIVE_JOB_STATES)
    reasons = [f"storage job {name} ({percent}%) is {state}" if n == 1 else
               f"{n} storage jobs {name} ({percent}%) are {state}" for (name, percent, state), n in alike.items()]
    reasons += [f"virtual disk {d.name} is {d.health.name} ({', '.join(d.operational)})" for d in snapshot.disks
                if d.health != HealthStatus.Healthy or any(s != "OK" for s in d.operational)]
    if snapshot.pool is not None and snapshot.pool.health != HealthStatus.Healthy:
        reasons.append(f"storage pool {snapshot.pool.name} is {snapshot.pool.health.name}")
    return reasons


def may_drain(snapshot: ClusterSnapshot, node: str) -> Verdict:
    """May `node` leave service now? Only when every other node is Up and storage is fully healthy."""
    names = {n.name.lower() for n in snapshot.nodes}
    if node.lower() not in names:
        return Verdict(False, (f"{node} is not a node of the cluster",))
    reasons = [f"node {n.name} is {n.state.name}" for n in snapshot.nodes
               if n.name.lower() != node.lower() and n.state != NodeState.Up]
    reasons += storage_busy(snapshot)
    return Verdict(not reasons, tuple(reasons))


def storage_settled(snapshot: ClusterSnapshot) -> Verdict:
    """No storage job runs, every virtual disk is Healthy and OK, the pool is Healthy."""
    reasons = storage_busy(snapshot)
    return Verdict(not reasons, tuple(reasons))


def repair_running(snapshot: ClusterSnapshot) -> bool:
    return any(j.state in ACTIVE_JOB_STATES for j in snapshot.jobs)
