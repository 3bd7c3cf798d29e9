"""The rolling upgrade of one cluster. It reads like the runbook, and takes its parts as arguments (the step
runner, the cluster lock, the progress sink), so a Prefect flow, a test or a benchmark drives the same loop:

    reconcile with the live cluster and the records: which nodes did a run of ours pause and not release?
    preflight; plan
    for each node, fewest roles first:
        stop if StopAfter has passed; warn once after WarnAfter
        skip it if it already runs the target build (and is back in service)
        up to MaxRetriesPerNode attempts, each under the cluster lock:
            gate -> pre-script -> drain -> install -> reboot -> wait back -> wait for a running repair
                 -> resume -> post-script -> wait for storage
            on a failure: bring back the node this run paused, if it answers; if it cannot be brought back,
            stop the run now (one node out of service is the most there may be)
        stop when more nodes failed than MaxFailedNodes allows

A node adopted from a crashed run continues from where its live state says it is; nothing is drained twice.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from hciupgrade.cluster import ClusterClient
from hciupgrade.models import NodeOutcome, RunOptions, RunOutcome
from hciupgrade.preflight import PlannedNode, Preflight, check
from hciupgrade.psenums import NodeState
from hciupgrade.records import RunRecorder, owned_nodes, runs_in_progress
from hciupgrade.remote import NodeUnreachable, RemoteError
from hciupgrade.steps import StepFailed, Steps

FULL = ("gate", "pre-script", "drain", "install", "reboot", "wait-back", "wait-repair", "resume", "post-script",
        "wait-storage")
AFTER_REBOOT = ("wait-back", "wait-repair", "resume", "post-script", "wait-storage")
RESTART = ("gate", "drain", "reboot", *AFTER_REBOOT)


def perform(steps: Steps, recorder: RunRecorder, step: str, node: str, owned: set[str]) -> Any:
    """Run one step on one node and record it as a phase. The one place a step's name meets its code."""
    actions: dict[str, Callable[[], Any]] = {
        "gate": lambda: steps.gate(node) and None,
        "gate-adopted": lambda: steps.gate_adopted(node),
        "pre-script": lambda: steps.script(node, "Pre"),
        "drain": lambda: steps.drain(node) and None,
        "install": lambda: steps.install(node),
        "reboot": lambda: steps.reboot(node),
        "wait-back": lambda: steps.wait_back(node),
        "wait-repair": lambda: steps.wait_storage(node, settled=False) and None,
        "resume": lambda: steps.resume(node) and None,
        "post-script": lambda: steps.script(node, "Post"),
        "wait-storage": lambda: steps.wait_storage(node, settled=True) and None,
    }
    if step == "drain" and node not in owned:
        owned.add(node)  # before the call: an answer lost on the way may hide a pause
        recorder.emit(node, "ownership", "paused")
    with recorder.phase(node, step) as extra:
        result = actions[step]()
        if result is not None:
            extra["result"] = result
    if step == "resume":
        owned.discard(node)
        recorder.emit(node, "ownership", "released")
    return result


class StopRun(Exception):
    """The run stops here: the reason is the run's error."""


@dataclass
class RollingUpgrade:
    client: ClusterClient
    options: RunOptions
    recorder: RunRecorder
    steps: Steps
    lock: Callable[[], AbstractContextManager[Any]] = nullcontext
    run_step: Callable[[str, str], Any] | None = None  # (step, node) -> result; default: perform directly
    progress: Callable[[float], None] = lambda fraction: None
    owned: set[str] = field(default_factory=set)

    def step(self, name: str, node: str) -> Any:
        if self.run_step is not None:
            return self.run_step(name, node)
        return perform(self.steps, self.recorder, name, node, self.owned)

    # --- before anything changes ----------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Adopt the nodes a run of ours paused and did not release; release those that are Up again. A run of
        this cluster still alive on this machine blocks this one (CAU's "a run is already in progress")."""
        alive = runs_in_progress(self.client.name, exclude_run=self.recorder.run_id)
        if alive:
            raise StopRun(f"RunInProgress: run {alive[0]} is upgrading {self.client.name} on this machine; wait for "
                          "it to end (hci-upgrade status) or stop it")
        # a retried flow run keeps its run id: its earlier attempt's ownership counts too
        for node, run_id in owned_nodes(self.client.name).items():
            if node not in self.client.sessions:
                continue
            try:
                state = self.client.node_info(node).state
            except RemoteError:
                state = NodeState.Unknown
            if state == NodeState.Up:
                self.recorder.emit(node, "ownership", "released", reason=f"found Up (paused by run {run_id})")
            else:
                self.owned.add(node)
                self.recorder.emit(node, "ownership", "paused", adopted_from=run_id)

    def plan(self, pre: Preflight) -> list[PlannedNode]:
        names = list(self.client.sessions)
        if self.options.node_order:
            known = {n.lower(): n for n in names}
            unknown = [n for n in self.options.node_order if n.lower() not in known]
            if unknown:
                raise StopRun(f"NodeOrder: {unknown[0]!r} is not a node of {self.client.name} ({', '.join(names)})")
            order = [known[n.lower()] for n in self.options.node_order]
            order += [n for n in names if n not in order]
        else:
            roles = self.client.roles_per_node()
            order = sorted(names, key=lambda n: (roles.get(n, 0), names.index(n)))
        states = {n.name: n for n in pre.nodes}
        builds = {row.node: row.current for row in pre.scan}
        planned = []
        restart = {n.lower() for n in self.options.restart_only or []}
        for node in order:
            build, info = builds.get(node), states.get(node)
            if self.options.restart_only is not None and node not in self.owned:
                planned.append(PlannedNode(node, "restart", "rolling restart", RESTART) if node.lower() in restart
                               else PlannedNode(node, "skip", "not asked to restart"))
            elif build and self.options.build_reached(build) and node not in self.owned:
                planned.append(PlannedNode(node, "skip", f"already on {build}"))
            elif node in self.owned:
                planned.append(PlannedNode(node, "adopt", f"left {info.state.name if info else 'unknown'} by an "
                                                          "earlier run of ours: continue from its live state"))
            else:
                detail = f"{build or 'unknown build'} -> {self.options.target_build}"
                planned.append(PlannedNode(node, "upgrade", detail,
                                           tuple(s for s in FULL if self._wanted(s))))
        return planned

    def _wanted(self, step: str) -> bool:
        if step == "pre-script":
            return self.options.pre_update_script is not None
        if step == "post-script":
            return self.options.post_update_script is not None
        return True

    def steps_for(self, node: str) -> tuple[str, ...]:
        """The steps still to run for a node, from its live state (a node adopted from a crashed run continues).
        Read again inside the cluster lock, not reused from before it: another run may have upgraded the node
        while this one waited for the lock."""
        try:
            build: str | None = self.client.os_build(node)
        except NodeUnreachable:
            build = None
        info = self.client.node_info(node)
        on_target = build is not None and self.options.build_reached(build)
        if self.options.restart_only is not None:
            if node not in self.owned:
                return RESTART
            return AFTER_REBOOT if info.state in (NodeState.Down, NodeState.Joining) else (
                "gate-adopted", "drain", "reboot", *AFTER_REBOOT)
        if node not in self.owned:
            # on target and Up here means a retry after the resync wait failed: wait for the storage again
            return ("wait-storage",) if on_target and info.state == NodeState.Up else FULL
        if on_target or info.state in (NodeState.Down, NodeState.Joining):
            return AFTER_REBOOT
        return ("gate-adopted", "drain", "install", "reboot", *AFTER_REBOOT)

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self, *, dry_run: bool = False) -> tuple[RunOutcome, Preflight]:
        started = time.monotonic()
        self.recorder.emit(None, "run", "running", dry_run=dry_run, pid=os.getpid(), host=socket.gethostname(),
                           options=self.options.model_dump(mode="json", by_alias=True))
        outcomes: dict[str, NodeOutcome] = {}
        failure: str | None = None
        pre = Preflight()
        try:
            self.reconcile()
            pre = check(self.client, self.options, self.owned)
            for f in pre.findings:
                self.recorder.emit(None, "preflight", "succeeded" if f.ok else "failed", check=f.check,
                                   detail=f.detail, blocking=f.blocking)
            pre.plan = self.plan(pre)
            outcomes = {p.node: NodeOutcome(node=p.node) for p in pre.plan}
            self.recorder.emit(None, "plan", "succeeded", order=[p.node for p in pre.plan],
                               actions={p.node: p.action for p in pre.plan})
            if pre.blocked:
                left = f" ({', '.join(sorted(self.owned))} left paused or down by an earlier run)" if self.owned else ""
                raise StopRun("preflight: " + "; ".join(pre.blocking_reasons()) + left)
            if not dry_run:
                self._upgrade(pre.plan, outcomes, started)
                failed = [o for o in outcomes.values() if o.result == "failed"]
                if failed:  # within MaxFailedNodes the run went on, but the cluster is not upgraded
                    raise StopRun("PartiallyFailed: " + "; ".join(o.error or o.node for o in failed))
        except StopRun as stop:
            failure = str(stop)
        except (StepFailed, RemoteError) as e:
            failure = str(e)
        except BaseException as e:  # cancelled (SIGTERM from Prefect's runner, the UI, Ctrl-C): record, re-raise
            self._finish(outcomes, f"cancelled ({type(e).__name__})", dry_run)
            raise
        return self._finish(outcomes, failure, dry_run), pre

    def _finish(self, outcomes: dict[str, NodeOutcome], failure: str | None, dry_run: bool) -> RunOutcome:
        outcome = RunOutcome(run_id=self.recorder.run_id, cluster=self.client.name, succeeded=failure is None,
                             nodes=list(outcomes.values()), error=failure)
        self.recorder.emit(None, "run", "succeeded" if outcome.succeeded else "failed", error=failure,
                           dry_run=dry_run, paused_by_this_run=sorted(self.owned),
                           outcome=outcome.model_dump(mode="json"))
        return outcome

    def _upgrade(self, plan: list[PlannedNode], outcomes: dict[str, NodeOutcome], started: float) -> None:
        allowed = self.options.failed_nodes_allowed(len(plan))
        failed: list[str] = []
        warned = False
        for index, planned in enumerate(plan):
            node, outcome = planned.node, outcomes[planned.node]
            elapsed = (time.monotonic() - started) * self.steps.clock.time_factor
            if self.options.stop_after is not None and elapsed > self.options.stop_after.total_seconds():
                raise StopRun(f"StopAfter ({self.options.stop_after}) passed before {node}: stopped between nodes")
            if self.options.warn_after is not None and not warned and \
                    elapsed > self.options.warn_after.total_seconds():
                warned = True
                self.recorder.emit(None, "warn-after", "failed", error=f"the run exceeds WarnAfter "
                                                                       f"({self.options.warn_after})")
            self._node(node, outcome)
            if outcome.result == "failed":
                failed.append(node)
                if outcome.left_paused:
                    raise StopRun(outcome.error or node)
                if len(failed) > allowed:
                    raise StopRun(f"MaxFailedNodesExceeded: {len(failed)} node(s) failed ({', '.join(failed)}), "
                                  f"{allowed} allowed; last: {outcome.error}")
            self.progress((index + 1) / len(plan))
        # the run ends with healthy storage, also when every node was done already (a rerun after a crash
        # during the last resync)
        with self.recorder.phase(None, "settle"):
            self.steps.wait_storage("cluster", settled=True)

    def _node(self, node: str, outcome: NodeOutcome) -> None:
        """One node: skip it, or up to MaxRetriesPerNode attempts of its steps under the cluster lock."""
        if self._skip(node, outcome):
            return
        self.recorder.emit(node, "node", "running", build_before=outcome.build_before)
        for attempt in range(1, self.options.max_retries_per_node + 1):
            outcome.attempts = attempt
            try:
                with self.lock():
                    for step in self.steps_for(node):
                        if self._wanted(step):
                            self.step(step, node)
            except (StepFailed, RemoteError) as e:
                outcome.error = str(e) if str(e).startswith(node) else f"{node}: {e}"
                if not self.recover(node):
                    outcome.left_paused = True
                    outcome.error += f" ({node} is left paused or down: see to it by hand)"
                    break
                if attempt < self.options.max_retries_per_node:
                    self.recorder.emit(node, "retry", "running", attempt=attempt + 1, error=outcome.error)
                continue
            except BaseException:  # cancelled: bring the node back if it can be, record, stop
                outcome.left_paused = not self.recover(node)
                outcome.error = f"{node}: the run was cancelled here" + (
                    f"; {node} is left paused or down" if outcome.left_paused else "; the node was brought back")
                self._node_failed(node, outcome)
                raise
            outcome.build_after = self.client.os_build(node)
            outcome.result, outcome.error = "upgraded" if self.options.restart_only is None else "restarted", None
            self.recorder.emit(node, "node", "succeeded", result=outcome.result, attempts=attempt,
                               build_before=outcome.build_before, build_after=outcome.build_after)
            return
        self._node_failed(node, outcome)

    def _skip(self, node: str, outcome: NodeOutcome) -> bool:
        """Read the node's build; skip a node that needs nothing (or fail one that does not answer)."""
        try:
            outcome.build_before = self.client.os_build(node)
        except NodeUnreachable as e:
            if node in self.owned:  # a node of ours that is down: its steps wait for it as after a reboot
                return False
            outcome.error = f"{node}: not reachable before its upgrade: {e}"
            self._node_failed(node, outcome)
            return True
        restart = self.options.restart_only
        if node in self.owned:
            return False
        needless = (restart is not None and node.lower() not in {n.lower() for n in restart}) or (
            restart is None and self.options.build_reached(outcome.build_before))
        if needless and self.client.node_info(node).state == NodeState.Up:
            outcome.result, outcome.build_after = "skipped", outcome.build_before
            self.recorder.emit(node, "node", "skipped", result="skipped", build_before=outcome.build_before,
                               build_after=outcome.build_before)
            return True
        return False

    def _node_failed(self, node: str, outcome: NodeOutcome) -> None:
        outcome.result = "failed"
        self.recorder.emit(node, "node", "failed", result="failed", error=outcome.error, attempts=outcome.attempts,
                           build_before=outcome.build_before, left_paused=outcome.left_paused)

    def recover(self, node: str) -> bool:
        """After a failed step: resume the node if this run paused it and it answers. True if it is in service."""
        if node not in self.owned:
            return True
        try:
            if self.client.node_info(node).state == NodeState.Paused and self.client.reachable(node):
                with self.recorder.phase(node, "recover"):
                    self.steps.abort_install(node)  # setup's down-level phase changes nothing until a restart
                    self.steps.resume(node)
                self.owned.discard(node)
                self.recorder.emit(node, "ownership", "released", reason="recovered after a failure")
                return True
        except RemoteError:
            pass
        return False
