"""Engine cau: Cluster-Aware Updating does the node work, hci-upgrade keeps everything around it.

hci-upgrade's preflight (Test-CauSetup's findings and the second hop joined in), plan, window-fit, approvals, lock
and fence run as with its own engine (hciupgrade/upgrade/rolling.py); then:

    start CAU's run through its clustered role (Start-CauUpdatingRun.ps1), or follow the one already in progress
        (started by someone else, or by a run of ours that crashed): never a second run
    follow it with Get-CauRun: each node CAU takes is a task run of its own, its statuses (Scanning, Suspending,
        Installing, Restarting, WaitingForStorageRepair) recorded as the phases of our engine (drain, install,
        reboot, wait-repair), so status, the records and the artifacts read the same
    at its end: Get-CauReport -Last -Detailed, each node's result checked against its build, summarised beside our
        per-node table; the clustered role hci-upgrade added is removed
    cancelled (the UI, SIGTERM): Stop-CauRun, and the nodes CAU still had named; CAU brings them back at its next
        safe point

CAU's own rules decide inside its run (MaxRetriesPerNode, MaxFailedNodes, RebootTimeoutMinutes, an operator's pause):
this module reports them; it never acts on a node itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import pandas as pd

from hciupgrade import cau
from hciupgrade.models import NodeOutcome
from hciupgrade.records.recorder import now_iso
from hciupgrade.remote import RemoteError
from hciupgrade.upgrade.runbook import DRAIN, INSTALL, REBOOT, RESUME, WAIT_REPAIR

if TYPE_CHECKING:
    from hciupgrade.cluster import ClusterClient
    from hciupgrade.upgrade.preflight import Preflight
    from hciupgrade.upgrade.rolling import RollingUpgrade

T = TypeVar("T")

# CAU's node statuses as the phases of our engine (reference/domain.md §5.4; the names past Scanning [UNVERIFIED])
PHASE_OF = {"Suspending": DRAIN, "Installing": INSTALL, "Restarting": REBOOT, "Resuming": RESUME,
            "WaitingForStorageRepair": WAIT_REPAIR}


def report_table(report: cau.CauReport) -> pd.DataFrame:
    """Get-CauReport's nodes as one row each: CAU's status, its updates and its error."""
    return pd.DataFrame([{"node": n.node, "cau_status": n.status,
                          "updates": ", ".join(f"{u.get('UpdateTitle')}: {u.get('UpdateResultCode')}"
                                               for u in n.updates),
                          "cau_error": n.error or ""} for n in report.nodes],
                        columns=["node", "cau_status", "updates", "cau_error"])


@dataclass
class ByCau:
    engine: RollingUpgrade
    run_id: str | None = None
    phases: dict[str, tuple[str, str]] = field(default_factory=dict)  # node -> (open phase, its start)
    finished: set[str] = field(default_factory=set)

    @property
    def client(self) -> ClusterClient:
        return self.engine.client

    def run(self, pre: Preflight, outcomes: dict[str, NodeOutcome]) -> cau.CauReport:
        """CAU's run from its start (or adoption) to its report; raises StopRun/WindowEnded as the engine does."""
        from hciupgrade.upgrade.rolling import StopRun

        e, options = self.engine, self.engine.options
        for node, o in outcomes.items():
            o.build_before = pre.builds.get(node)
        current = cau.read_run(self.client)
        if current.state == "RunInProgress":
            e.recorder.emit(None, "cau", "running", detail=f"following CAU's run {current.run_id} (in progress: "
                                                           "never restarted)", cau_run_id=current.run_id)
        else:
            if options.vm_policy == "shut-down":  # CAU's Pre/PostUpdateScripts stop and start each node's VMs
                failed = {n: r for n, r in self.client.each(lambda n: cau.install_workload_scripts(self.client, n),
                                                             pre.builds).items() if isinstance(r, RemoteError)}
                if failed:
                    raise StopRun("Engine cau: could not write the workload scripts CAU runs on "
                                  + "; ".join(f"{n}: {r}" for n, r in failed.items()))
            with e.recorder.phase(None, "cau-start", plugin=cau.plugin_for(options)):
                current = cau.start_run(self.client, options)
            if current.state == "RunFailed":
                raise StopRun("CAU: Get-CauRun says RunFailed (a run left canceled or half-done): recover with "
                              "Invoke-CauRun -ForceRecovery -Force from a node with every node Up, then run again")
            e.recorder.emit(None, "cau", "running", detail=f"CAU's run {current.run_id} started "
                                                           f"({cau.plugin_for(options)})", cau_run_id=current.run_id)
        self.run_id = current.run_id
        try:
            self._follow(len(outcomes))
        except RemoteError as e:  # this run lost sight of CAU's run; CAU's run itself goes on
            raise StopRun(f"lost sight of CAU's run {self.run_id} ({e}); CAU goes on by itself: run again to follow "
                          "it to its end (Get-CauRun shows where it is)") from None
        except BaseException:  # cancelled (the UI, SIGTERM): CAU is told to stop too
            self._stop()
            raise
        return self._end(outcomes)

    def _again(self, read: Callable[[], T]) -> T:
        """A read asked again a few times, a poll apart: a node of the cluster restarts under CAU at any moment (a
        session broken by it opens again on the next try)."""
        for attempt in range(1, 4):
            try:
                return read()
            except RemoteError:
                if attempt == 3:
                    raise
                self.engine.steps.clock.sleep(self.engine.options.poll_seconds)
        raise AssertionError("unreachable")

    def _read(self) -> cau.CauRun:
        return self._again(lambda: cau.read_run(self.client))

    def _follow(self, nodes: int) -> None:
        e = self.engine
        while True:
            view = self._read()
            if view.state != "RunInProgress":
                return
            active = next((n for n, s in view.statuses.items() if s != "Waiting" and n not in self.finished), None)
            if active is None:
                e.steps.clock.sleep(e.options.poll_seconds)
                continue
            e.last_step, e.current = "cau", active
            e.recorder.emit(active, "node", "running", by="CAU", attempt=1)
            e.run_phase(f"cau-{active}", lambda node=active: self._follow_node(node))
            self.finished.add(active)
            e.progress(0.99 * len(self.finished) / max(nodes, 1))

    def _follow_node(self, node: str) -> str:
        """One node as CAU takes it: its statuses recorded as our phases, until CAU has its result."""
        e = self.engine
        while True:
            view = self._read()
            result = next((r for r in view.results if r.node.lower() == node.lower()), None)
            if view.state != "RunInProgress" or result is not None:
                self._close(node, "failed" if result is not None and result.status != "Succeeded" else "succeeded",
                            result.error if result else None)
                return result.status if result else "ended"
            status = view.statuses.get(node, "Waiting")
            phase = PHASE_OF.get(status)
            if phase is not None and self.phases.get(node, ("",))[0] != phase:
                self._close(node, "succeeded", None)
                self.phases[node] = (phase, now_iso())
                e.recorder.emit(node, phase, "running", start=self.phases[node][1], by="CAU", cau_status=status)
            e.steps.clock.sleep(e.options.poll_seconds)

    def _close(self, node: str, status: str, error: str | None) -> None:
        if node in self.phases:
            phase, start = self.phases.pop(node)
            self.engine.recorder.emit(node, phase, status, start=start, end=now_iso(), by="CAU", error=error)

    def _build(self, node: str) -> str:
        return self._again(lambda: self.client.os_build(node, timeout=60))

    def _stop(self) -> None:
        """Cancelled: Stop-CauRun, and the nodes CAU still has named (it brings them back at its next safe point)."""
        e = self.engine
        try:
            view = cau.read_run(self.client)  # what CAU has in hand as it is told to stop
            cau.stop_run(self.client)
            busy = {n: s for n, s in view.statuses.items() if s != "Waiting"}
            e.recorder.emit(None, "cau", "cancelled", cau_run_id=self.run_id,
                            detail="Stop-CauRun sent; CAU ends its run at the node's next safe point"
                                   + ("; CAU still has " + ", ".join(f"{n} ({s})" for n, s in busy.items())
                                      if busy else ""), left=busy)
        except RemoteError as err:
            e.recorder.emit(None, "cau", "failed", error=f"Stop-CauRun failed: {err}: stop CAU's run by hand "
                                                         "(Stop-CauRun)")

    def _end(self, outcomes: dict[str, NodeOutcome]) -> cau.CauReport:
        """The report: each node's result, checked against its build; the run's end as the engine states it."""
        from hciupgrade.upgrade.rolling import StopRun, WindowEnded

        e = self.engine
        report = cau.last_report(self.client)
        if report is None or (self.run_id and report.run_id != self.run_id):
            raise StopRun(f"CAU's run {self.run_id} ended without a report (Get-CauReport -Last)")
        builds = self.client.each(self._build, list(outcomes))
        for r in report.nodes:
            o = outcomes.get(next((n for n in outcomes if n.lower() == r.node.lower()), r.node))
            if o is None:
                continue
            build = builds.get(o.node)
            o.build_after = build if isinstance(build, str) else None
            o.attempts = max(o.attempts, 1)
            reached = o.build_after is not None and e.options.build_reached(o.build_after)
            if r.status == "Succeeded" and reached:
                before = o.build_before is not None and e.options.build_reached(o.build_before)
                o.result = "skipped" if before else "upgraded"
            else:
                o.result = "failed"
                o.error = f"{o.node}: CAU: {r.error or r.status}" + (
                    f" (CAU says Succeeded, yet it is on {o.build_after})" if r.status == "Succeeded" else "")
            e.recorder.emit(o.node, "node", "succeeded" if o.result != "failed" else "failed", result=o.result,
                            error=o.error, attempts=o.attempts, build_before=o.build_before,
                            build_after=o.build_after, by="CAU")
        e.recorder.emit(None, "cau-report", report.status.lower(), cau_run_id=report.run_id,
                        error_id=report.error_id, rows=report_table(report).to_dict(orient="records"))
        try:
            if cau.remove_our_role(self.client):
                e.recorder.emit(None, "note", "info", detail=f"removed CAU's clustered role {cau.GROUP_NAME}")
        except RemoteError as err:
            e.swallowed["cluster"] = f"could not remove CAU's clustered role {cau.GROUP_NAME}: {err}"
        left = [o.node for o in outcomes.values() if o.result == "not-started"]
        if report.status == "Canceled":
            stop_after = e.options.stop_after or _window(e.options.window_seconds)
            if stop_after is not None:
                raise WindowEnded(f"CAU's run reached StopAfter ({stop_after}) and was canceled between nodes; left "
                                  f"for the next window: {', '.join(left) or 'none'}")
            raise StopRun(f"CAU's run was canceled (Stop-CauRun); not started: {', '.join(left) or 'none'}")
        if report.status != "Succeeded":  # CAU's own words first: PartiallyFailed, MaxFailedNodesExceeded
            failed = "; ".join(o.error or o.node for o in outcomes.values() if o.result == "failed")
            raise StopRun(f"{report.error_id or report.status}: CAU's run ended {report.status}: {failed}")
        e.progress(1.0)
        return report


def _window(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)

