"""How to do each step of a node's upgrade, with its wait and its timeout. One function a step; the order, the
lock and what to do on failure are the flow's business (flows/rolling_upgrade.py).

The install step drives Windows setup from the extracted 23H2 media, the documented manual alternative to CAU
(reference/domain.md §1.3): setup.exe /auto upgrade runs in a scheduled task with /NoReboot, so this code decides
when the node restarts; the restart then runs setup's offline phases and the node comes back on 25398, Paused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import (
    CUMULATIVE,
    FEATURE,
    SCHED_S_TASK_HAS_NOT_RUN,
    SCHED_S_TASK_RUNNING,
    UPDATES,
    WAIT_CALL_SECONDS,
    ClusterClient,
    ClusterSnapshot,
    NodeInfo,
    UpdateKind,
)
from hciupgrade.models import RunOptions
from hciupgrade.psenums import DrainStatus, NodeState, ScheduledTaskState
from hciupgrade.remote import CmdletFailed, NodeUnreachable
from hciupgrade.targets import at_least
from hciupgrade.upgrade.gates import ACTIVE_JOB_STATES, may_drain, repair_running, storage_busy, storage_settled

NOT_READ: Any = object()  # a fact the read at hand did not include: it is read on its own
T = TypeVar("T")

ERROR_CLUSTER_SPACE_DEGRADED = 5987


class StepFailed(Exception):
    """A step that ended the node's upgrade. Not retried: retrying would not change the cluster's answer."""

    def __init__(self, node: str, step: str, message: str) -> None:
        super().__init__(f"{node}: {step}: {message}")
        self.node = node
        self.step = step


class NotBackInTime(StepFailed):
    """A node that did not come back within its restart's timeout: slow, maybe not broken (a later run adopts
    it from its live state)."""


class PausedByOther(StepFailed):
    """The node is paused, and not by this run (no mark of ours): it is never drained, updated, restarted or
    resumed by us."""


class GateRefused(StepFailed):
    """The cluster was not safe to take the node out of service within the gate's timeout: a cluster condition,
    nothing was done to the node."""


class StorageNotHealthy(StepFailed):
    """A repair did not finish within WaitForStorageRepairTimeoutMinutes: a cluster condition, named by its
    volumes and jobs, not a failure of the node that was updated."""


# a wait past this many times what the same wait took on an earlier node of the run is stalled: anchors.md gives
# 45 to 90 min a node for the feature update (the longest twice the shortest, an assumption to calibrate) and 5 to
# 15 min for a restart, so 1.5 times the shortest seen is [UNVERIFIED] as a spread rule; a knob would be the
# option's when real runs calibrate it
STALL_FACTOR = 1.5
STALL_MARGIN_SECONDS = 15 * 60  # and at least this much past it: a poll's timing is not a stall
# only waits that took minutes on the earlier node (setup, a restart, a repair): a wait of seconds (the restart
# seen going down) that runs long is its step's timeout's to judge, and at an accelerated clock a slow call alone
# would look like a quarter of an hour
STALL_MIN_EXPECTED_SECONDS = 5 * 60
NOT_OURS = ("NodeNotUp", "NotOurPause")  # the error ids of our packaged pause and resume scripts


@dataclass
class Steps:
    client: ClusterClient
    options: RunOptions
    clock: ClusterClock
    note: Callable[[str, str], None] = lambda node, text: None  # (node, what an operator reads in the run's log)
    # (cluster seconds waited, why): a wait past the spread rule (STALL_FACTOR times what the same wait took on an
    # earlier node), or a repair with no progress, told once a wait; the run goes on to the step's timeout
    stalled: Callable[[float, str], None] = lambda waited, why: None
    # cluster seconds each kind of wait took on the nodes done so far (the shortest): a cluster's nodes are alike
    took: dict[str, float] = field(default_factory=dict)
    marked: bool = True  # each node's changes need this run's mark on it (the rolling path; not the offline one)
    # node -> its feature update's task (state, exit code; None: never registered) as its attempt's first read saw
    # it a moment before: the install takes it once instead of reading it again (the gate, the VMs' stop and the
    # drain come between; none of them touches the task)
    task_seen: dict[str, tuple[ScheduledTaskState, int] | None] = field(default_factory=dict)

    @property
    def poll(self) -> float:
        return self.options.poll_seconds

    def wait(self, probe: Callable[[], T | None], timeout: float, kind: str | None = None, *,
             long_poll: bool = False) -> T | None:
        """Poll `probe` (cluster seconds), less often as the wait grows (ClusterClock.wait_for); a wait of a
        `kind` seen before polls often again near the time it took then. `long_poll`: the probe itself waits on
        the node until something changes (or its own limit), so it is called again at once."""
        start = self.clock.now()
        owner = self.client.owner
        expected = self.took.get(kind) if kind else None
        told: list[bool] = []

        def checked() -> T | None:  # a run that lost the cluster stops waiting at once, not at its next change
            if owner is not None:
                owner.check()
            value = probe()
            waited = self.clock.now() - start
            if not value and kind and expected and expected >= STALL_MIN_EXPECTED_SECONDS and not told and \
                    waited > max(STALL_FACTOR * expected, expected + STALL_MARGIN_SECONDS):
                told.append(True)
                self.stalled(waited, f"past {STALL_FACTOR:g} times (and {STALL_MARGIN_SECONDS / 60:g} min more "
                                     f"than) the {expected / 60:.0f} min it took on an earlier node")
            return value

        if long_poll:
            value = self.clock.wait_for(checked, timeout=timeout, poll=0.0, max_poll=0.0)
        else:
            value = self.clock.wait_for(checked, timeout=timeout, poll=self.poll,
                                        max_poll=self.options.poll_max_seconds, expected=expected)
        if value and kind:
            took = self.clock.now() - start
            self.took[kind] = min(took, self.took.get(kind, took))
        return value

    def gate(self, node: str) -> ClusterSnapshot:
        """Wait until `node` may leave service: it answers and is Up, every other node is Up, storage is
        healthy. A node paused by someone else meanwhile is refused at once, not waited for."""
        last = ["not checked yet"]

        def probe() -> ClusterSnapshot | None:
            try:
                snapshot = self.client.snapshot(on=node)  # asked of the node: its answer shows it answers
            except NodeUnreachable:
                last[:] = [f"{node} does not answer on WinRM"]
                return None
            if snapshot.node(node).state == NodeState.Paused:
                raise PausedByOther(node, "gate", f"{node} was paused by someone else: it is left as it is")
            verdict = may_drain(snapshot, node)
            last[:] = list(verdict.reasons)
            return snapshot if verdict else None

        snapshot = self.wait(probe, self.options.gate_timeout_minutes * 60)
        if snapshot is None:
            raise GateRefused(node, "gate", f"not safe to drain after {self.options.gate_timeout_minutes:g} min: "
                              + "; ".join(last))
        return snapshot

    def drain(self, node: str) -> NodeInfo:
        """Mark the node as ours and Suspend-ClusterNode -Drain it, in one packaged script that first checks it
        is Up and paused by nobody: the node is Paused at once, then its roles move; poll DrainStatus.
        Idempotent: a node paused under our mark is not paused twice, a drain in progress is only watched. A
        failed or timed-out drain fails the node, or is forced when the operator allowed it."""
        vms = len(self.client.groups_on(node))
        self.note(node, f"draining {node} ({vms} VM{'s' if vms != 1 else ''})")
        self._suspend(node, force=False)
        info = self._wait_drained(node)
        if info is not None and info.drain_status == DrainStatus.Completed:
            return info
        stuck = self.client.groups_on(node)
        where = f" ({', '.join(f'{g} is {s}' for g, s in stuck)} on {node})" if stuck else ""
        why = f"DrainStatus Failed: a role could not be moved off the node{where}" if info is not None else \
            f"still draining after {self.options.drain_timeout_minutes:g} min{where}"
        if self.options.drain_timeout_policy != "force-drain":
            raise StepFailed(node, "drain", why)
        self._suspend(node, force=True)  # roles that cannot move are moved as failed: the operator allowed it
        info = self._wait_drained(node)
        if info is None or info.drain_status != DrainStatus.Completed:
            raise StepFailed(node, "drain", f"{why}; -ForceDrain did not complete either")
        return info

    def _suspend(self, node: str, *, force: bool) -> None:
        try:
            self.client.pause_for_upgrade(node, force_drain=force)
        except CmdletFailed as e:
            if e.has_error_id(*NOT_OURS):
                raise PausedByOther(node, "drain", e.errors[0].message) from None
            if e.has_error_id("OtherNodeNotUp"):  # another node left service after our gate: nothing was done
                raise GateRefused(node, "drain", e.errors[0].message) from None
            if e.has_win32(ERROR_CLUSTER_SPACE_DEGRADED):
                raise StepFailed(node, "drain", "the cluster refused: a clustered space is degraded") from None
            raise

    def _wait_drained(self, node: str) -> NodeInfo | None:
        def finished() -> NodeInfo | None:
            info = self.client.node_info(node)
            return info if info.drain_status in (DrainStatus.Completed, DrainStatus.Failed) else None

        return self.wait(finished, self.options.drain_timeout_minutes * 60, "drain")

    @property
    def update(self) -> UpdateKind:
        return UPDATES[self.options.update]

    def install(self, node: str) -> int:
        """Run the update's installer in its scheduled task (no restart) and wait for its exit code: setup's
        down-level phase for the feature update, wusa.exe for the cumulative update. Idempotent: an installer
        that is running is only watched, one that already succeeded is not run again (a staged node's)."""
        path = self.options.setup_path if self.update is FEATURE else self.options.update_package
        return self._install(node, self.update, path, marked=self.marked)

    def stage(self, node: str) -> int:
        """PreStage: setup's first phase on a node still in service. Nothing in it changes the running node until
        its next restart, so no mark is needed; the run's fence still proves the run owns the cluster."""
        return self._install(node, FEATURE, self.options.setup_path, marked=False)

    def install_lcu(self, node: str) -> int | None:
        """The cumulative update in the same drain (InstallCumulativeUpdateInSameDrain): after the feature update's
        restart, the node still paused. None when the node is already at the checker's minimum (media that
        carried it, or a rerun after this step)."""
        if at_least(self.client.os_build(node), self.options.release.lcu_minimum):
            return None
        return self._install(node, CUMULATIVE, self.options.update_package, marked=self.marked)

    def reboot_lcu(self, node: str) -> None:
        """The restart that completes the cumulative update, unless the node is at the minimum already."""
        if not at_least(self.client.os_build(node), self.options.release.lcu_minimum):
            self.reboot(node, self.options.reboot_timeout_minutes)

    def wait_back_lcu(self, node: str) -> str:
        build = self.wait_back(node, self.options.reboot_timeout_minutes, "back-lcu")
        if not at_least(build, self.options.release.lcu_minimum):
            raise StepFailed(node, "wait-back-lcu", f"back on {build}, below the cumulative update's minimum "
                                                    f"{self.options.release.lcu_minimum}")
        return build

    def _install(self, node: str, kind: UpdateKind, path: str, *, marked: bool) -> int:
        seen = self.task_seen.pop(node, NOT_READ) if kind is FEATURE else NOT_READ
        status = self.client.update_status(node, kind) if seen is NOT_READ else seen
        state, code = status or (ScheduledTaskState.Unknown, None)
        if state == ScheduledTaskState.Ready and code in kind.success:
            return code
        if state != ScheduledTaskState.Running:
            self.client.register_update(node, kind, path, start=True, marked=marked)

        timeout = self.options.install_timeout_minutes * 60
        start = self.clock.now()

        def finished() -> tuple[ScheduledTaskState, int] | None:
            # the node waits for the installer's end (Wait-UpdateTask.ps1), at most until the step's timeout
            left = min(WAIT_CALL_SECONDS, max(1.0, timeout - (self.clock.now() - start)))
            code = self.client.await_update_result(node, kind, left)
            # a task just started can read 0x41303 (has not run) until the scheduler launches it: not an end
            return (ScheduledTaskState.Ready, code) if code not in (SCHED_S_TASK_RUNNING,
                                                                     SCHED_S_TASK_HAS_NOT_RUN) else None

        status = self.wait(finished, timeout, f"install-{kind.name}", long_poll=True)
        if status is None:
            raise StepFailed(node, "install", f"the {kind.name} update still running after "
                                              f"{self.options.install_timeout_minutes:g} min")
        code = status[1]
        if code not in kind.success:
            what = "setup" if kind is FEATURE else "wusa.exe"
            raise StepFailed(node, "install", f"{what} failed with exit code {code:#010x}; the node keeps its build")
        return code

    def reboot(self, node: str, timeout_minutes: float | None = None) -> None:
        """Restart the node and wait until the cluster sees it go down (it must not be mistaken for back)."""
        timeout_minutes = timeout_minutes or self.options.restart_timeout_minutes
        self.client.restart(node, marked=self.marked)

        def went_down() -> bool:
            try:
                return self.client.node_info(node).state in (NodeState.Down, NodeState.Joining)
            except NodeUnreachable:
                return False

        if not self.wait(went_down, timeout_minutes * 60, "went-down"):
            raise StepFailed(node, "reboot", "the node did not go down after Restart-Computer")

    def wait_back(self, node: str, timeout_minutes: float | None = None, kind: str = "back") -> str:
        """Wait until WinRM answers and the cluster has the node back (Paused); return its new build."""
        timeout_minutes = timeout_minutes or self.options.restart_timeout_minutes
        start = self.clock.now()

        def back() -> str | None:
            # another node waits until the cluster has it back (Wait-ClusterNodeState.ps1), at most to the timeout
            left = min(WAIT_CALL_SECONDS, max(1.0, timeout_minutes * 60 - (self.clock.now() - start)))
            if self.client.await_node_state(node, (NodeState.Paused, NodeState.Up), left).state not in (
                    NodeState.Paused, NodeState.Up):
                return None
            try:
                return self.client.os_build(node, timeout=30)  # it answers on WinRM; the build it came back on
            except NodeUnreachable:
                self.clock.sleep(self.poll)  # the cluster has it, WinRM not yet: asked again in a poll
                return None

        build = self.wait(back, timeout_minutes * 60, kind, long_poll=True)
        if build is None:
            raise NotBackInTime(node, "wait-back", f"not back {timeout_minutes:g} min after its restart")
        if not self.options.build_reached(build):
            raise StepFailed(node, "wait-back", f"back on {build}, not on {self.options.goal_build}")
        return build

    def wait_storage(self, node: str, *, settled: bool) -> ClusterSnapshot:
        """Wait until no repair runs (settled=False) or storage is fully healthy again (settled=True). A node waits
        (Wait-StorageRepair.ps1) and answers at the end, or every few minutes with the repair's progress."""
        last: list[str] = []
        told: set[str] = set()
        start = self.clock.now()
        timeout = self.options.repair_timeout_minutes * 60
        moved = [start, ""]  # when the repair's progress last changed, and what it was
        stall_told: list[bool] = []

        def probe() -> ClusterSnapshot | None:
            left = min(WAIT_CALL_SECONDS, max(1.0, timeout - (self.clock.now() - start)))
            snapshot = self.client.await_storage(left, settled=settled)
            if repair_running(snapshot):
                last[:] = storage_busy(snapshot)
                jobs = [j for j in snapshot.jobs if j.state in ACTIVE_JOB_STATES]
                progress = ", ".join(f"{j.name} {j.percent // 10 * 10}%" for j in jobs)
                if progress not in told:  # a line a tenth of the way, not one a call
                    told.add(progress)
                    self.note(node, "waiting for the repair: " + "; ".join(last))
                exact = ", ".join(f"{j.name} {j.percent}%" for j in jobs)
                now = self.clock.now()
                if exact != moved[1]:
                    moved[:] = [now, exact]
                elif now - moved[0] > STALL_MARGIN_SECONDS and not stall_told:  # a repair that does not move
                    stall_told.append(True)
                    self.stalled(now - start, f"no repair progress for {(now - moved[0]) / 60:.0f} min ({exact})")
                return None
            if not settled:
                return snapshot
            verdict = storage_settled(snapshot)
            last[:] = list(verdict.reasons)
            return snapshot if verdict else None

        snapshot = self.wait(probe, timeout, "settled" if settled else None, long_poll=True)
        if snapshot is None:
            if settled:  # name the volumes too, and a node whose absence keeps them degraded
                snapshot = self.client.snapshot()
                last = storage_busy(snapshot) + [f"node {n.name} is {n.state.name}" for n in snapshot.nodes
                                                 if n.state != NodeState.Up] or last
            raise StorageNotHealthy(node, "wait-storage",
                                    f"storage not healthy after {self.options.repair_timeout_minutes:g} min: "
                                    + "; ".join(last or ["a repair job is still running"]))
        return snapshot

    def resume(self, node: str) -> NodeInfo:
        """Resume-ClusterNode, only under our mark (which it then removes)."""
        try:
            info = self.client.resume_after_upgrade(node, self.options.failback)
            self.note(node, f"resumed {node} (failback {self.options.failback})")
            return info
        except CmdletFailed as e:
            if e.has_error_id(*NOT_OURS):
                raise PausedByOther(node, "resume", e.errors[0].message) from None
            raise

    def abort_install(self, node: str) -> None:
        """Stop an installer that is still in its first phase (it changes nothing until a restart), before the
        node is brought back."""
        status = self.client.update_status(node, self.update)
        if status is not None and status[0] == ScheduledTaskState.Running:
            self.client.stop_update(node, self.update, marked=self.marked)

    def gate_adopted(self, node: str) -> None:
        """For a node a dead run left out of service: every other node must be Up before this one continues."""
        others = [n for n in self.client.nodes(exclude=node) if n.name.lower() != node.lower()
                  and n.state != NodeState.Up]
        if others:
            raise StepFailed(node, "gate", "; ".join(f"node {n.name} is {n.state.name}" for n in others))

    def stop_vms(self, node: str) -> list[str]:
        """WorkloadPolicy shut-down: the node's running VMs shut down before its drain, their names kept on the
        node (Stop-NodeWorkloads.ps1) for start_vms, this run's or the next one's."""
        try:
            names = [str(n) for n in self.client.act(node, "Stop-NodeWorkloads.ps1", {"Name": node}).objects]
        except CmdletFailed as e:
            raise StepFailed(node, "stop-vms", e.errors[0].message) from None
        if names:
            self.note(node, f"shut down {len(names)} VM(s) on {node}: {', '.join(names)}")
        return names

    def start_vms(self, node: str) -> list[str]:
        """The VMs stop_vms shut down on this node started again, wherever they are now (Start-NodeWorkloads.ps1);
        one that does not start fails the step, named, and stays listed for the next try."""
        try:
            names = [str(n) for n in self.client.act(node, "Start-NodeWorkloads.ps1", {}).objects]
        except CmdletFailed as e:
            raise StepFailed(node, "start-vms", e.errors[0].message) from None
        if names:
            self.note(node, f"started {len(names)} VM(s) again: {', '.join(names)}")
        return names

    def pre_script(self, node: str) -> None:
        self.script(node, "Pre")

    def post_script(self, node: str) -> None:
        self.script(node, "Post")

    def wait_repair(self, node: str) -> ClusterSnapshot:
        """Wait out a repair that runs now (the node is still paused: its drives resync first)."""
        return self.wait_storage(node, settled=False)

    def wait_settled(self, node: str) -> ClusterSnapshot:
        """Wait until storage is healthy and settled after the node's resume."""
        return self.wait_storage(node, settled=True)

    def script(self, node: str, phase: str) -> None:
        path = self.options.pre_update_script if phase == "Pre" else self.options.post_update_script
        if path is None:
            return
        try:
            self.client.run_node_script(node, path, phase)
        except CmdletFailed as e:
            raise StepFailed(node, f"{phase.lower()}-script", e.errors[0].message) from None
