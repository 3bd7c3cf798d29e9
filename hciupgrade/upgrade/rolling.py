"""The rolling upgrade of one cluster. It reads like the runbook, and takes its parts as arguments (the step
runner, the cluster lock, the progress sink), so a Prefect flow, a test or a benchmark drives the same loop:

    reconcile with the live cluster and the records: which nodes did a run of ours pause and not release?
        (ours only with both pieces of evidence: our record, and our mark on the node)
    preflight; plan (each node's position and the steps it needs: hciupgrade/upgrade/positions.py)
    under the cluster lock: take a fence newer than any the cluster has seen, show it to every node, and take over
        the marks of a dead run of ours (every change from now on proves in its own call that this run owns it)
    for each node, fewest roles first:
        stop if StopAfter has passed; warn once after WarnAfter
        up to MaxRetriesPerNode attempts:
            read the node's position again; skip it, refuse it (paused by someone else, down), or run its steps:
            gate -> pre-script -> drain (only an Up node nobody paused) -> install -> reboot -> wait back
                 -> wait for a running repair -> resume (only under our mark) -> post-script -> wait for storage
            on a failure: bring back the node this run paused, if it answers; if it cannot be brought back,
            stop the run now (one node out of service is the most there may be)
        a gate that never opens, or a repair that stalls, is the cluster's condition: the run stops
        stop when more nodes failed (or were refused) than MaxFailedNodes allows

A node adopted from a crashed run continues from where its live state says it is; nothing is drained twice.
A run that loses the cluster (its lease lapsed, a newer run's fence on a node) stops at once and does nothing more
to it, not even a recovery: the nodes are another run's now (hciupgrade/ownership.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import FEATURE, ClusterClient, ClusterSnapshot, NodeInfo
from hciupgrade.models import NodeOutcome, RunOptions, RunOutcome
from hciupgrade.ownership import Held, LostOwnership
from hciupgrade.psenums import NodeState, ScheduledTaskState
from hciupgrade.records import RunRecorder, owned_nodes, runs_in_progress
from hciupgrade.records.store import host_id
from hciupgrade.remote import SWITCH, CertificateRejected, NodeUnreachable, RemoteError, RemotingError
from hciupgrade.upgrade.by_cau import ByCau
from hciupgrade.upgrade.gates import repair_running
from hciupgrade.upgrade.positions import Mode, NodeFacts, Position, decide, held_by, position_of
from hciupgrade.upgrade.preflight import PlannedNode, Preflight, check
from hciupgrade.upgrade.runbook import (
    DRAIN,
    RESUME,
    STEPS,
    WAIT_BACK,
    WAIT_BACK_LCU,
    WAIT_STORAGE,
    Ownership,
    wanted,
)
from hciupgrade.upgrade.steps import (
    NOT_READ,
    GateRefused,
    NotBackInTime,
    PausedByOther,
    StepFailed,
    Steps,
    StorageNotHealthy,
)


def perform(engine: RollingUpgrade, step: str, node: str) -> Any:
    """Run one step on one node and record it as a phase. The one place a step's name meets its code."""
    steps, recorder, owned = engine.steps, engine.recorder, engine.owned
    spec, mark = STEPS[step], recorder.run_id
    if not spec.reads:
        engine.take_over(node)  # a dead run's mark still on it (it was away when this run took the cluster)
    if spec.ownership == Ownership.TAKES and node not in owned:
        owned[node] = mark  # before the call: an answer lost on the way may hide a pause (the mark tells)
        recorder.emit(node, "ownership", "paused", mark=mark)
    try:
        with recorder.phase(node, step) as extra:
            result = getattr(steps, spec.method)(node)
            result = result if spec.keeps_result else None
            if result is not None:
                extra["result"] = result
    except (PausedByOther, GateRefused) as e:
        if node in owned and spec.ownership == Ownership.TAKES:  # our pause never happened (another's, or unsafe)
            owned.pop(node)
            recorder.emit(node, "ownership", "released", reason=str(e))
        raise
    if spec.ownership == Ownership.RELEASES:
        owned.pop(node, None)
        recorder.emit(node, "ownership", "released")
    return result


class StopRun(Exception):
    """The run stops here: the reason is the run's error."""


class WindowEnded(StopRun):
    """StopAfter passed: the run stops between nodes, cleanly; the next window continues."""


@dataclass
class RollingUpgrade:
    client: ClusterClient
    options: RunOptions
    recorder: RunRecorder
    steps: Steps
    lock: Callable[[], AbstractContextManager[Any]] = nullcontext
    run_step: Callable[[str, str], Any] | None = None  # (step, node) -> result; default: perform directly
    # (name, what) -> what(): the flow makes reconcile, preflight, plan and each recovery a task run of its own
    run_phase: Callable[[str, Callable[[], Any]], Any] = lambda name, what: what()
    progress: Callable[[float], None] = lambda fraction: None
    owned: dict[str, str] = field(default_factory=dict)  # node -> the run whose mark it carries
    swallowed: dict[str, str] = field(default_factory=dict)  # node -> why a best-effort recovery failed
    cancelled: RunOutcome | None = None  # the outcome recorded when the run was cancelled
    window_ended: bool = False
    lost: str | None = None  # why this run no longer owns the cluster: it does nothing more to it
    stale_marks: dict[str, str] = field(default_factory=dict)  # node Up again with a dead run's mark -> that run
    attempts: dict[str, int] = field(default_factory=dict)  # node -> its current attempt (task runs say which)
    last_step: str | None = None  # the step run last (a recovery counts as one)
    current: str | None = None  # the node of the step run last
    staged: set[str] = field(default_factory=set)  # nodes this run staged, or may have (PreStage)
    drained: set[str] = field(default_factory=set)  # nodes this run drained

    def __post_init__(self) -> None:
        self.steps.note = lambda node, text: self.recorder.emit(node, "note", "info", detail=text) and None
        self.steps.stalled = self._stalled

    def _stalled(self, waited: float, why: str) -> None:
        """A wait past the spread rule, or a repair that does not move: told (status, the run's log, the flow's
        state message and event), and waited on to the step's timeout, which decides."""
        self.recorder.emit(self.current, "stalled", "running", step=self.last_step, minutes=round(waited / 60, 1),
                           why=why)

    @classmethod
    def build(cls, client: ClusterClient, options: RunOptions, recorder: RunRecorder, time_factor: float,
              **parts: Any) -> RollingUpgrade:
        """The one way to make the engine: its steps on the cluster's clock, and the parts a caller hands in
        (the flow's lock, progress and task runs; nothing for the dry run)."""
        return cls(client, options, recorder, Steps(client, options, ClusterClock(time_factor)), **parts)

    @property
    def mode(self) -> Mode:
        return Mode.UPGRADE if self.options.restart_only is None else Mode.RESTART

    def step(self, name: str, node: str) -> Any:
        self.last_step, self.current = name, node
        if name == DRAIN:
            self.drained.add(node)
        if self.run_step is not None:
            return self.run_step(name, node)
        return perform(self, name, node)

    # --- what a node is and needs -------------------------------------------------------------------------
    def facts(self, node: str, pre: Preflight | None = None) -> NodeFacts:
        """The node's position facts: its build, the cluster's view of it, our mark on it. Read live; or, for the
        plan, taken from the preflight's reads of a moment ago (`pre`)."""
        known = pre if pre is not None and pre.nodes else None
        build, reachable, state, mark, task = self._known(node, known) if known else self._read(node)
        marked = (bool(mark) and str(mark.get("PausedByRun")) == self.owned.get(node)) if reachable else None
        if self.mode == Mode.RESTART:
            on_target = node.lower() not in {n.lower() for n in self.options.restart_only or []}
        else:
            on_target = build is not None and self.options.build_reached(build)
        staged = False
        if self.mode == Mode.UPGRADE and self.options.update == "feature" and state == NodeState.Up and build \
                and not on_target:  # setup's first phase done on a node in service (PreStage, or a run before)
            status = self.client.update_status(node, FEATURE) if task is NOT_READ else task
            staged = status is not None and status[0] == ScheduledTaskState.Ready and status[1] in FEATURE.success
        settled = True
        if on_target and state == NodeState.Up and not self.owned:  # a node of ours away is finished first
            jobs = known.snapshot.jobs if known and known.snapshot else tuple(self.client.storage_jobs())
            settled = not repair_running(ClusterSnapshot((), (), jobs, None))
        return NodeFacts(node, state, reachable, on_target, node in self.owned, marked, settled, held_by(mark),
                         build, staged)

    def _read(self, node: str) -> tuple[str | None, bool, NodeState | None, dict[str, Any] | None, Any]:
        """(build, reachable, state, mark, feature task), live: one read on the node itself; the cluster's view
        from another node when the node's own cluster service does not answer (or the node does not)."""
        kind = FEATURE if self.mode == Mode.UPGRADE and self.options.update == "feature" else None
        info: NodeInfo | None = None
        task: Any = NOT_READ
        self.steps.task_seen.pop(node, None)
        try:
            reading = self.client.position(node, kind)
            build, mark, reachable, info = reading.build, reading.mark, True, reading.info
            if kind:
                task = self.steps.task_seen[node] = reading.task
        except NodeUnreachable:
            build, mark, reachable = None, None, False
        if info is None:
            try:
                info = self.client.node_info(node)
            except RemoteError:
                pass
        return build, reachable, info.state if info is not None else None, mark, task

    def _known(self, node: str, pre: Preflight) -> tuple[str | None, bool, NodeState | None, dict[str, Any] | None,
                                                         Any]:
        """(build, reachable, state, mark) from the preflight's reads; the mark is read only where it can matter
        (a node that is not Up, or one a run of ours paused)."""
        build, reachable = pre.builds.get(node), pre.reachable.get(node, False)
        info = next((n for n in pre.nodes if n.name.lower() == node.lower()), None)
        state = info.state if info is not None else None
        mark = None
        if reachable and (node in self.owned or state != NodeState.Up):
            try:
                mark = self.client.pause_mark(node)
            except NodeUnreachable:
                reachable = False
        read = pre.read.get(node)
        feature = self.mode == Mode.UPGRADE and self.options.update == "feature"
        return build, reachable, state, mark, read.task if read is not None and feature else NOT_READ

    # --- before anything changes ----------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Adopt the nodes a run of ours paused and did not release, when the node carries that run's mark (or
        is away and cannot show it); release those that are Up again, or paused without our mark. A run of this
        cluster still alive, on this machine or another (the shared records), blocks this one (CAU's "a run is
        already in progress")."""
        alive = runs_in_progress(self.client.name, exclude_run=self.recorder.run_id, store=self.recorder.store,
                                 settle=True)
        if alive:
            run = alive[0]
            where = "this machine" if run["host"] in (None, host_id()) else run["host"]
            raise StopRun(f"RunInProgress: run {run['run_id']} is upgrading {self.client.name} on {where} "
                          f"(process {run['pid']}); wait for it to end (hci-upgrade status) or stop it")
        # a retried flow run keeps its run id: its earlier attempt's ownership counts too
        for node, mark in owned_nodes(self.client.name, store=self.recorder.store).items():
            if node not in self.client.sessions:
                continue
            self.owned[node] = mark
            facts = self.facts(node)
            position = position_of(facts)
            if position in (Position.OURS_PAUSED, Position.OURS_BACK, Position.OURS_AWAY):
                self.recorder.emit(node, "ownership", "paused", adopted_from=mark, mark=mark,
                                   position=position.value)
                continue
            del self.owned[node]
            if facts.state == NodeState.Up and facts.marked_ours:
                # a mark left on a node that is Up again would make a later pause look like ours: removed once
                # this run owns the cluster (a change needs the lock and the fence)
                self.stale_marks[node] = mark
            reason = f"found Up (paused by run {mark})" if facts.state == NodeState.Up else \
                f"found {facts.state.name if facts.state else 'unknown'} without our mark: paused by {facts.held_by}"
            self.recorder.emit(node, "ownership", "released", reason=reason)

    def clean_up(self, pre: Preflight) -> None:
        """What the target release removes before the first node, approved (the preflight listed it only then):
        the 24H2 path's Cloud Management group (Remove-ClusterGroup -RemoveResources; irreversible)."""
        approval = self.options.approval
        for group in pre.cleanup:
            assert approval is not None  # the preflight blocks a clean-up without one
            with self.recorder.phase(None, "cloud-management", group=group, approver=approval.approver,
                                     reason=approval.reason, source=approval.source):
                self.client.act_on_cluster("Remove-ClusterGroup", {"Name": group, "RemoveResources": SWITCH,
                                                                   "Force": SWITCH})
            self.recorder.emit(None, "note", "info", detail=f"removed the cluster group '{group}' (approved by "
                                                            f"{approval.approver}: {approval.reason})")

    def pre_stage(self, plan: list[PlannedNode]) -> None:
        """PreStage: setup's first phase on every node still to upgrade, at once, while they serve their VMs. A
        node whose staging fails is left to its turn, where setup runs again in its drain as without PreStage; a
        node paused by someone else (or away) is not in the list: its plan refuses it."""
        nodes = [p.node for p in plan if p.position == Position.FRESH.value and p.action == "upgrade"]

        def stage(node: str) -> int | StepFailed:
            try:
                with self.recorder.phase(node, "stage") as extra:
                    extra["result"] = code = self.steps.stage(node)
            except StepFailed as e:
                return e
            self.staged.add(node)
            return code

        if not nodes:
            return
        self.recorder.emit(None, "note", "info", detail=f"staging setup on {', '.join(nodes)} at once (PreStage)")
        try:
            staged = self.client.each(stage, nodes)
        except BaseException:  # cancelled: setup's first phase is stopped where it runs (it changed nothing yet)
            for node in nodes:
                try:
                    self.client.stop_update(node, FEATURE, marked=False)
                except RemoteError as e:
                    self.swallowed[node] = f"could not stop its staging: {e}"
            raise
        for node, result in staged.items():
            if isinstance(result, LostOwnership):
                raise result
            if isinstance(result, RemoteError):
                # the node went away while staging: setup may have staged it and Windows restarted it (its turn
                # finds out, never counting it as upgraded by us)
                self.staged.add(node)
                self.recorder.emit(node, "note", "info", detail=f"{node}: lost while staging ({result}); its turn "
                                                                "checks whether it restarted on its own")
            elif isinstance(result, StepFailed):
                self.recorder.emit(node, "note", "info", detail=f"{node}: staging failed ({result}); setup runs "
                                                                "again in its drain")

    def own(self, held: Held | None) -> None:
        """Under the lock: a fence newer than any the cluster has seen (the store's count and the nodes' own),
        shown to every node that answers, a dead run's marks taken over, stale marks of ours removed. From here
        on every change carries the run's proof (hciupgrade/ownership.py)."""
        run_id = self.recorder.run_id
        dead = {node: mark for node, mark in self.owned.items() if mark != run_id}
        marks = self.client.own(run_id, lambda at_least: self.recorder.store.next_fence(self.client.name,
                                                                                       at_least=at_least),
                                held, take_over={**dead, **self.stale_marks})
        fence = self.client.owner.fence if self.client.owner else None
        self.recorder.emit(None, "lock", "acquired", fence=fence, lease_id=held.lease_id if held else None)
        for node, previous in dead.items():
            mark = marks.get(node)
            if isinstance(mark, dict) and str(mark.get("PausedByRun")) == run_id:
                self.owned[node] = run_id
                self.recorder.emit(node, "ownership", "paused", mark=run_id, taken_over_from=previous, fence=fence)
        for node in self.stale_marks:
            try:  # the node is Up: only our mark (taken over above) goes
                self.client.resume_after_upgrade(node, self.options.failback)
            except RemoteError as e:
                self.swallowed[node] = f"could not remove our stale mark: {e}"

    def take_over(self, node: str, *, enlist: bool = False) -> None:
        """Show the node this run's fence; a node a dead run of ours paused (its mark) becomes this run's. Only
        where that is still to be done (a node that was away at the start is taken over when it answers)."""
        run_id = self.recorder.run_id
        previous = self.owned.get(node)
        if not enlist and previous in (None, run_id):
            return
        mark = self.client.claim(node, take_over=previous if previous not in (None, run_id) else None)
        if previous not in (None, run_id) and mark and str(mark.get("PausedByRun")) == run_id:
            self.owned[node] = run_id
            self.recorder.emit(node, "ownership", "paused", mark=run_id, taken_over_from=previous,
                               fence=self.client.owner.fence if self.client.owner else None)

    def plan(self, pre: Preflight | None = None) -> list[PlannedNode]:
        """Each node's position and the steps it needs, from the preflight's reads (`pre`) or read live."""
        names = list(self.client.sessions)
        if self.options.node_order:
            known = {n.lower(): n for n in names}
            unknown = [n for n in self.options.node_order if n.lower() not in known]
            if unknown:
                raise StopRun(f"NodeOrder: {unknown[0]!r} is not a node of {self.client.name} ({', '.join(names)})")
            order = [known[n.lower()] for n in self.options.node_order]
            order += [n for n in names if n not in order]
        else:
            roles = self.client.roles_per_node(pre.groups if pre is not None else None)
            order = sorted(names, key=lambda n: (roles.get(n, 0), names.index(n)))
        order = [n for n in order if n in self.owned] + [n for n in order if n not in self.owned]  # ours first
        planned = []
        read = self.client.each(lambda node: self.facts(node, pre), order)  # what is left to read: at once
        for node in order:
            facts = read[node]
            if isinstance(facts, RemoteError):
                raise facts
            position, decision = decide(self.mode, facts)
            action = decision.action
            if action == "run":
                action = "adopt" if position.value.startswith("ours") else self.mode.value
            detail = f"paused by {facts.held_by}" if position == Position.PAUSED_BY_OTHER else decision.why
            steps = tuple(s for s in decision.steps if wanted(self.options, s))
            planned.append(PlannedNode(node, action, detail, steps, position.value))
        return self.fit_window(planned)

    def fit_window(self, planned: list[PlannedNode]) -> list[PlannedNode]:
        """With a window and estimates (the fleet's, from past runs): which nodes fit before the run starts, the
        staging first when PreStage runs."""
        o = self.options
        if o.window_seconds is None or o.node_estimate_seconds is None:
            return planned
        at = (o.stage_estimate_seconds or 0) if o.stages else 0
        fitted = []
        for p in planned:
            if p.action in ("upgrade", "adopt", "restart"):
                at += o.node_estimate_seconds
                fits = at + o.window_margin_seconds <= o.window_seconds
                p = replace(p, detail=f"{p.detail}; " + (f"fits the window (done by about {at / 60:.0f} min)" if fits
                                                         else "after the window's end: left for the next one"))
            fitted.append(p)
        return fitted

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self, *, dry_run: bool = False) -> tuple[RunOutcome, Preflight]:
        started = time.monotonic()
        self.recorder.emit(None, "run", "running", dry_run=dry_run, pid=os.getpid(), host=host_id(),
                           options=self.options.model_dump(mode="json", by_alias=True))
        outcomes: dict[str, NodeOutcome] = {}
        failure: str | None = None
        pre = Preflight()
        try:
            self.run_phase("reconcile", self.reconcile)
            pre = self.run_phase("preflight", lambda: check(self.client, self.options, set(self.owned)))
            for f in pre.findings:
                self.recorder.emit(None, "preflight", "succeeded" if f.ok else "failed", check=f.check,
                                   detail=f.detail, blocking=f.blocking)
            try:  # a blocked run still shows its plan (the dry run), when the cluster answers for one
                pre.plan = self.run_phase("plan", lambda: self.plan(pre))
            except RemoteError:
                if not pre.blocked and self.options.engine != "cau":  # CAU's nodes restart under its run
                    raise
            outcomes = {p.node: NodeOutcome(node=p.node) for p in pre.plan} or \
                {node: NodeOutcome(node=node) for node in self.client.sessions}
            self.recorder.emit(None, "plan", "succeeded", order=[p.node for p in pre.plan],
                               actions={p.node: p.action for p in pre.plan},
                               positions={p.node: p.position for p in pre.plan})
            if pre.blocked:
                raise StopRun("preflight: " + "; ".join(pre.blocking_reasons()))
            if not dry_run:
                with self.lock() as held:  # taken once for the run (DESIGN: one cluster, one run holding its lock)
                    self.own(held)
                    self.clean_up(pre)
                    if self.options.stages:
                        self.pre_stage(pre.plan)
                    if self.options.engine == "cau":  # CAU does the node work (hciupgrade/upgrade/by_cau.py)
                        ByCau(self).run(pre, outcomes)
                    else:
                        self._upgrade(pre.plan, outcomes, started)
                failed = [o for o in outcomes.values() if o.counts_as_failed]
                if failed:  # within MaxFailedNodes the run went on, but the cluster is not upgraded
                    raise StopRun("PartiallyFailed: " + "; ".join(o.error or o.node for o in failed))
        except LostOwnership as e:
            self.lost = str(e)
            failure = f"LostOwnership: {e}: this run does nothing more to {self.client.name}"
        except WindowEnded as stop:
            failure, self.window_ended = str(stop), True
        except StopRun as stop:
            failure = str(stop)
        except (StepFailed, RemoteError) as e:
            failure = str(e)
        except BaseException as e:  # cancelled (SIGTERM from Prefect's runner, the UI, Ctrl-C): record, re-raise
            self.cancelled = self._finish(outcomes, f"cancelled ({type(e).__name__})", dry_run, status="cancelled")
            raise
        return self._finish(outcomes, failure, dry_run), pre

    def _finish(self, outcomes: dict[str, NodeOutcome], failure: str | None, dry_run: bool,
                status: str | None = None) -> RunOutcome:
        if failure is not None and self.owned and self.lost:  # not ours to bring back: the run that took over's
            failure += ("; left as they are, to the run that holds the cluster now (or paused, if none does): "
                        + ", ".join(sorted(self.owned)))
        elif failure is not None and self.owned:  # every node a run of ours left out of service, by name
            left = [f"{n} (paused by run {run}{'; ' + self.swallowed[n] if n in self.swallowed else ''})"
                    for n, run in sorted(self.owned.items())]
            failure += "; left paused or down by a run of ours: " + ", ".join(left)
        outcome = RunOutcome(run_id=self.recorder.run_id, cluster=self.client.name, succeeded=failure is None,
                             target=f"{self.options.release.name} ({self.options.goal_build})",
                             nodes=list(outcomes.values()), error=failure, left_paused=sorted(self.owned),
                             window_ended=self.window_ended)
        if self.window_ended:
            status = "stopped"
        # refused: it failed before it touched anything (a blocked preflight, a run already in progress)
        refused = failure is not None and status != "cancelled" and not self.owned and not any(
            o.attempts for o in outcomes.values())
        self.recorder.emit(None, "run", status or ("succeeded" if outcome.succeeded else "failed"), error=failure,
                           dry_run=dry_run, refused=refused, paused_by_this_run=sorted(self.owned),
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
                left = [p.node for p in plan[index:] if outcomes[p.node].result == "not-started"]
                raise WindowEnded(f"StopAfter ({self.options.stop_after}) passed before {node}: stopped between "
                                  f"nodes; left for the next window: {', '.join(left)}")
            needs_work = planned.action not in ("skip", "refuse")
            if self.options.window_seconds is not None and needs_work:
                left_s = self.options.window_seconds - elapsed
                need_s = (self.options.node_estimate_seconds or 0) + self.options.window_margin_seconds
                if need_s > left_s:
                    left = [p.node for p in plan[index:] if outcomes[p.node].result == "not-started"]
                    raise WindowEnded(f"the window has {max(left_s, 0) / 60:.0f} min left and {node} needs about "
                                      f"{need_s / 60:.0f} min with the margin: stopped between nodes; left for the "
                                      f"next window: {', '.join(left)}")
            if self.options.warn_after is not None and not warned and \
                    elapsed > self.options.warn_after.total_seconds():
                warned = True
                self.recorder.emit(None, "warn-after", "failed", error=f"the run exceeds WarnAfter "
                                                                       f"({self.options.warn_after})")
            if self.options.node_soak_minutes and needs_work and any(
                    o.result == "upgraded" for o in outcomes.values()):
                self.soak(node)
            self._node(node, outcome)
            if outcome.counts_as_failed:
                failed.append(node)
                if outcome.left_paused:
                    raise StopRun(outcome.error or node)
                if len(failed) > allowed:
                    raise StopRun(f"MaxFailedNodesExceeded: {len(failed)} node(s) failed or were refused "
                                  f"({', '.join(failed)}), {allowed} allowed; last: {outcome.error}")
            self.progress(0.99 * (index + 1) / len(plan))  # 100% only for a run that ends upgraded
        # the run ends with healthy storage, also when every node was done already (a rerun after a crash
        # during the last resync); a last step that waited for exactly that has shown it already
        if self.last_step == WAIT_STORAGE:
            if not failed:
                self.progress(1.0)
            return
        try:
            with self.recorder.phase(None, "settle"):
                self.steps.wait_storage("cluster", settled=True)
        except StorageNotHealthy as e:
            raise StopRun(f"storage: {e}".replace("cluster: wait-storage: ", "")) from None
        if not failed:
            self.progress(1.0)

    def _unplanned_restart(self, node: str, facts: NodeFacts, outcome: NodeOutcome) -> NodeFacts | None:
        """A node this run staged and never drained that is away, or back on the target: it restarted on its own
        and setup's offline phases upgraded it without a drain. Waited for (it is out of service either way),
        reported, and never counted as upgraded by hci-upgrade. None when nothing of the kind happened."""
        away = not facts.reachable or facts.state in (NodeState.Down, NodeState.Joining, None)
        if not away and not facts.on_target:
            return None
        if away:
            self.recorder.emit(node, "note", "info", detail=f"{node} went down on its own after its staging: "
                                                            "waiting for it to come back")
            self.steps.wait(lambda: self.client.reachable(node) and self.client.node_info(node).state in (
                NodeState.Up, NodeState.Paused) or None, self.options.feature_update_reboot_timeout_minutes * 60)
            facts = self.facts(node)
        outcome.build_before = outcome.build_after = facts.build
        outcome.result, outcome.attempts = "skipped", 0
        outcome.error = (f"{node} restarted outside this run after its staging: it is on {facts.build} without a "
                         "drain by hci-upgrade (its VMs failed over); not counted as upgraded: check its VMs and "
                         "the event log")
        self.recorder.emit(node, "node", "skipped", result="skipped", reason=outcome.error,
                           build_before=facts.build, build_after=facts.build)
        return facts

    def soak(self, node: str) -> None:
        """NodeSoakMinutes: the cluster runs with the last node back under load before the next one leaves."""
        minutes = self.options.node_soak_minutes
        with self.recorder.phase(node, "soak", minutes=minutes):
            self.recorder.emit(node, "note", "info", detail=f"soaking {minutes:g} min before {node}'s gate")
            self.steps.clock.sleep(minutes * 60)

    def _node(self, node: str, outcome: NodeOutcome) -> None:
        """One node: up to MaxRetriesPerNode attempts, each deciding again from the node's position."""
        for attempt in range(1, self.options.max_retries_per_node + 1):
            outcome.attempts = self.attempts[node] = attempt
            results: dict[str, Any] = {}
            try:
                facts = self.facts(node)  # read again: the plan is older, and an attempt may have failed
                if attempt == 1 and node in self.staged and node not in self.drained:
                    facts = self._unplanned_restart(node, facts, outcome) or facts
                    if outcome.result == "skipped":
                        return
                if attempt == 1:
                    outcome.build_before = facts.build
                position, decision = decide(self.mode, facts)
                if decision.action == "skip" and attempt == 1:
                    outcome.result, outcome.attempts = "skipped", 0
                    outcome.build_after = outcome.build_before
                    if self.options.shuts_down_vms and position == Position.DONE:
                        try:  # VMs a run shut down, left off by a crash between its resume and their start
                            self.steps.start_vms(node)
                        except StepFailed as e:
                            outcome.error = str(e)
                    self.recorder.emit(node, "node", "skipped", result="skipped", reason=decision.why,
                                       build_before=outcome.build_before, build_after=outcome.build_before)
                    return
                if decision.action == "refuse":
                    why = f"paused by {facts.held_by}" if position == Position.PAUSED_BY_OTHER else decision.why
                    raise NotStarted(node, position.value, f"{why}: not touched")
                if attempt == 1:
                    self.recorder.emit(node, "node", "running", build_before=outcome.build_before,
                                       position=position.value, steps=list(decision.steps))
                for step in decision.steps:
                    if wanted(self.options, step):
                        results[step] = self.step(step, node)
            except LostOwnership:
                raise  # nothing more is done to the cluster: no recovery, no retry (the run says what it leaves)
            except (NotStarted, PausedByOther) as e:
                if isinstance(e, PausedByOther) and e.step == RESUME:  # our mark is gone: not ours to resume
                    self.owned.pop(node, None)
                    outcome.error = str(e)
                    break
                self._not_started(node, outcome, str(e), counts=True)
                return
            except GateRefused as e:
                self._not_started(node, outcome, str(e), counts=False)
                raise StopRun(f"{e}: the run stops here (the cluster is not safe to take a node out)") from None
            except StorageNotHealthy as e:
                if node in self.owned:
                    self._recover(node)  # it is on its new build: bringing it back only adds redundancy
                self._storage_stop(node, outcome, e)
            except (StepFailed, RemoteError) as e:
                outcome.error = str(e) if str(e).startswith(node) else f"{node}: {e}"
                outcome.retryable = retryable(e)
                if not self._recover(node):
                    outcome.left_paused = True
                    why = f": {self.swallowed[node]}" if node in self.swallowed else ""
                    outcome.error += f" ({node} is left paused or down{why}; see to it by hand)"
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
            # wait-back read the build the node came back on; an adopted node that skipped it is read now
            outcome.build_after = results.get(WAIT_BACK_LCU) or results.get(WAIT_BACK) or self.client.os_build(node)
            outcome.result, outcome.error = "upgraded" if self.mode == Mode.UPGRADE else "restarted", None
            outcome.retryable = False
            self.recorder.emit(node, "node", "succeeded", result=outcome.result, attempts=attempt,
                               build_before=outcome.build_before, build_after=outcome.build_after)
            return
        self._node_failed(node, outcome)

    def _not_started(self, node: str, outcome: NodeOutcome, error: str, *, counts: bool) -> None:
        """Nothing was done to the node (a gate that never opened, a pause that is not ours)."""
        outcome.result, outcome.error, outcome.refused = "not-started", error, counts
        self.recorder.emit(node, "node", "not-started", result="not-started", error=error,
                           build_before=outcome.build_before)

    def _storage_stop(self, node: str, outcome: NodeOutcome, error: StorageNotHealthy) -> None:
        """The node's update is done, its storage is not: report it upgraded with storage not healthy, and
        stop the run naming the volumes and jobs (a cluster condition, waited for once)."""
        try:
            outcome.build_after = self.client.os_build(node)
        except RemoteError:
            outcome.build_after = None
        reached = outcome.build_after is not None and self.options.build_reached(outcome.build_after)
        before = outcome.build_before is not None and self.options.build_reached(outcome.build_before)
        outcome.result = "skipped" if before else ("upgraded" if reached else "failed")
        outcome.storage_healthy = False
        outcome.error = f"{node}: updated, but {error}".replace(f"{node}: wait-storage: ", "") if reached else \
            str(error)
        self.recorder.emit(node, "node", "succeeded" if reached else "failed", result=outcome.result,
                           error=outcome.error, storage_healthy=False, build_before=outcome.build_before,
                           build_after=outcome.build_after)
        raise StopRun("storage: " + str(error).replace(f"{node}: wait-storage: ", "")) from None

    def _node_failed(self, node: str, outcome: NodeOutcome) -> None:
        outcome.result = "failed"
        self.recorder.emit(node, "node", "failed", result="failed", error=outcome.error, attempts=outcome.attempts,
                           build_before=outcome.build_before, left_paused=outcome.left_paused)

    def _recover(self, node: str) -> bool:
        self.last_step = "recover"
        return self.run_phase(f"recover-{node}", lambda: self.recover(node)) if node in self.owned else True

    def recover(self, node: str) -> bool:
        """After a failed step: resume the node if this run paused it (our mark on it) and it answers. True if
        it is in service or not ours to bring back; a failed attempt says why (`swallowed`)."""
        mark = self.owned.get(node)
        if mark is None:
            return True
        if self.lost:  # another run owns the cluster now: its nodes are not ours to touch
            self.swallowed[node] = f"this run lost the cluster ({self.lost})"
            return False
        try:
            self.take_over(node)
            mark = self.owned.get(node, mark)
            info = self.client.node_info(node)
            try:  # one read of the node: it answers on WinRM, and the mark it carries
                _, found = self.client.build_and_mark(node, timeout=30)
            except NodeUnreachable:
                self.swallowed[node] = "it does not answer on WinRM"
                return False
            if not found or str(found.get("PausedByRun")) != mark:  # our pause never landed
                del self.owned[node]
                self.recorder.emit(node, "ownership", "released",
                                   reason=f"{info.state.name} without our mark: paused by {held_by(found)}")
                return True
            if info.state in (NodeState.Paused, NodeState.Up):
                with self.recorder.phase(node, "recover"):
                    self.steps.abort_install(node)  # setup's down-level phase changes nothing until a restart
                    self.steps.resume(node)
                del self.owned[node]
                self.recorder.emit(node, "ownership", "released", reason="recovered after a failure")
                self.swallowed.pop(node, None)
                return True
            self.swallowed[node] = f"it is {info.state.name}"
        except LostOwnership as e:
            self.lost = self.lost or str(e)
            self.swallowed[node] = f"this run lost the cluster ({e})"
        except (RemoteError, StepFailed) as e:
            self.swallowed[node] = f"best-effort resume failed: {e}"
        return False


def retryable(error: BaseException) -> bool:
    """A failure one more run may get past: the node's session lost (it did not answer, the shell went away, a
    remoting fault), or a node not back within its restart's timeout. Not: refused credentials or certificate, a
    cmdlet's error, a step the cluster refused, an install that failed with its exit code."""
    if isinstance(error, NotBackInTime):
        return True
    return isinstance(error, NodeUnreachable | RemotingError) and not isinstance(error, CertificateRejected)


class NotStarted(StepFailed):
    """The node's position refuses it (paused by someone else, down, unreachable): nothing was done to it."""

    def __init__(self, node: str, position: str, message: str) -> None:
        Exception.__init__(self, f"{node}: {message}")
        self.node, self.step = node, position
