"""Check DESIGN.md's safety invariants 1 to 4 against a simulator event log.

The checks replay the log themselves (node states, disk health, storage jobs); they do not trust the simulator's
own refusals, so a simulator bug cannot hide an orchestrator bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hciupgrade.sim.scenario import Scenario

ORCHESTRATOR_ACTORS_EXCLUDED = {"operator", "system"}


def check_invariants(events: Iterable[dict[str, Any]], scenario: Scenario, outcome: dict[str, Any] | None,
                     orchestrator: str) -> list[str]:
    """Every violation found, as a sentence naming the event; an empty list means the run was safe."""
    violations: list[str] = []
    state = {n.name: n.state for n in scenario.cluster.nodes}
    paused_by = {n.name: "operator" for n in scenario.cluster.nodes if n.state == "Paused"}
    disks_unhealthy: set[str] = set()
    jobs_running: dict[str, int] = {}
    for e in events:
        kind = e["kind"]
        if kind == "node_state":
            state[e["node"]] = e["new"]
            out = sorted(n for n, s in state.items() if s != "Up")
            if len(out) > 1:
                violations.append(f"invariant 1: at t={e['t']} nodes {', '.join(out)} were out of service at once")
        elif kind == "disk_health":
            (disks_unhealthy.discard if e["health"] == "Healthy" else disks_unhealthy.add)(e["disk"])
        elif kind == "storage_job":
            disk = e["disk"]
            jobs_running[disk] = jobs_running.get(disk, 0) + (1 if e["status"] == "Running" else -1)
        elif kind == "suspend_refused" and e.get("by") == orchestrator:
            violations.append(f"invariant 2: at t={e['t']} the orchestrator tried to drain {e['node']} while "
                              f"{e['reason']}")
        elif kind == "suspend" and e.get("by") == orchestrator:
            others = [n for n, s in state.items() if n != e["node"] and s != "Up"]
            busy = [d for d, n in jobs_running.items() if n > 0]
            if others or busy or disks_unhealthy:
                violations.append(
                    f"invariant 2: at t={e['t']} {e['node']} was drained with nodes not Up {others}, repair "
                    f"running on {busy}, disks not Healthy {sorted(disks_unhealthy)}")
            paused_by[e["node"]] = orchestrator
        elif kind == "resume":
            if e.get("by") == orchestrator and paused_by.get(e["node"]) not in (orchestrator, None):
                violations.append(f"invariant 4: at t={e['t']} the orchestrator resumed {e['node']}, which "
                                  f"{paused_by[e['node']]} had paused")
            paused_by.pop(e["node"], None)
    left = sorted(n for n, who in paused_by.items() if who == orchestrator)
    for node in left:
        if outcome is None or outcome.get("succeeded"):
            violations.append(f"invariant 3: {node} was paused by the orchestrator and left so, yet the run "
                              "did not fail")
        elif node not in (outcome.get("error") or "") and not any(
                n["node"] == node and n.get("left_paused") for n in outcome.get("nodes", [])):
            violations.append(f"invariant 3: {node} was left paused and the failed run does not name it")
    return violations
