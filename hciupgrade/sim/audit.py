"""Check DESIGN.md's safety invariants 1 to 4 and 8 against a simulator event log.

The checks replay the log themselves (node states, who paused each node, disk health, storage jobs); they do not
trust the simulator's own refusals, so a simulator bug cannot hide an orchestrator bug. Pauses are tracked by
whoever makes them, at any moment: one present at the start (the scenario), one an operator makes mid-run.
Invariant 8 reads the run and fence that every owned script logs with what it changes: once a run has shown the
cluster a fence, a change by a run with an older one is a run acting after it lost the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hciupgrade.sim.scenario import Scenario

# What the orchestrator may do only to a node it paused itself (invariant 4), by the event kind that shows it.
TOUCHES = {"drain": "drained", "restart": "restarted", "install": "installed on", "task_registered": "staged setup on",
           "resume": "resumed"}


def check_invariants(events: Iterable[dict[str, Any]], scenario: Scenario, outcome: dict[str, Any] | None,
                     orchestrator: str) -> list[str]:
    """Every violation found, as a sentence naming the event; an empty list means the run was safe."""
    violations: list[str] = []
    state = {n.name: n.state for n in scenario.cluster.nodes}
    paused_by = {n.name: "operator" for n in scenario.cluster.nodes if n.state == "Paused"}
    disks_unhealthy: set[str] = set()
    jobs_running: dict[str, int] = {}
    newest: tuple[int, str] = (0, "")  # the newest fence shown to the cluster, and its run
    for e in events:
        kind, node, by = e["kind"], e.get("node"), e.get("by")
        if "fence" in e and kind != "fenced_out":
            if int(e["fence"]) < newest[0]:
                violations.append(f"invariant 8: at t={e['t']} run {e.get('run')} (fence {e['fence']}) changed "
                                  f"{node or 'the cluster'} ({kind}) after run {newest[1]} took it with fence "
                                  f"{newest[0]}")
            elif int(e["fence"]) > newest[0]:
                newest = (int(e["fence"]), str(e.get("run")))
        if kind == "node_state":
            before_out = sorted(n for n, s in state.items() if s != "Up" and n != node)
            state[node] = e["new"]
            if e["new"] != "Up" and e.get("old") == "Up" and by == orchestrator and before_out:
                violations.append(f"invariant 1: at t={e['t']} the orchestrator took {node} out of service while "
                                  f"{', '.join(before_out)} already was")
        elif kind == "disk_health":
            (disks_unhealthy.discard if e["health"] == "Healthy" else disks_unhealthy.add)(e["disk"])
        elif kind == "storage_job":
            disk = e["disk"]
            jobs_running[disk] = jobs_running.get(disk, 0) + (1 if e["status"] == "Running" else -1)
        elif kind == "suspend_refused" and by == orchestrator:
            violations.append(f"invariant 2: at t={e['t']} the orchestrator tried to drain {node} while "
                              f"{e['reason']}")
        elif kind == "suspend":
            if by == orchestrator:
                others = [n for n, s in state.items() if n != node and s != "Up"]
                busy = [d for d, n in jobs_running.items() if n > 0]
                if others or busy or disks_unhealthy:
                    violations.append(
                        f"invariant 2: at t={e['t']} {node} was drained with nodes not Up {others}, repair "
                        f"running on {busy}, disks not Healthy {sorted(disks_unhealthy)}")
            paused_by.setdefault(node, by)
        elif kind in TOUCHES and by == orchestrator and e.get("status") != "Stopped":
            holder = paused_by.get(node)
            if holder is not None and holder != orchestrator:
                violations.append(f"invariant 4: at t={e['t']} the orchestrator {TOUCHES[kind]} {node}, which "
                                  f"{holder} had paused")
            elif holder is None and kind in ("drain", "restart", "install") and not (
                    kind == "install" and e.get("update") == "feature" and state.get(node) == "Up"):
                # setup's first phase on a node in service (PreStage) changes nothing until a restart
                violations.append(f"invariant 4: at t={e['t']} the orchestrator {TOUCHES[kind]} {node}, which it "
                                  "had not paused")
        if kind == "resume":
            paused_by.pop(node, None)
    left = sorted(n for n, who in paused_by.items() if who == orchestrator)
    named = set((outcome or {}).get("left_paused") or [])
    for node in left:
        if outcome is None or outcome.get("succeeded"):
            violations.append(f"invariant 3: {node} was paused by the orchestrator and left so, yet the run "
                              "did not fail")
        elif node not in named and node not in (outcome.get("error") or "") and not any(
                n["node"] == node and n.get("left_paused") for n in outcome.get("nodes", [])):
            violations.append(f"invariant 3: {node} was left paused and the failed run does not name it")
    return violations
