"""The fast offline path (reference/domain.md §1.3, method 2): the whole cluster down in a window that allows it,
every node updated at once. It runs only after an approval of the downtime (the flow's business), and reads like
the runbook:

    every node answers and is Up, storage healthy          (or nothing is touched)
    shut down the running VMs; take the cluster shared volumes offline; Stop-Cluster
    the cluster service Disabled on every node              (a restart must not rejoin a half-updated cluster)
    every node at once: the feature update, restart, back on 23H2; the cumulative update, restart
    the cluster service Automatic, then started on each node through its own session (Start-Cluster from one node
        would reach the others: a second hop Windows refuses without delegation); every node Up
    the volumes online (a volume offline reads Detached, its health Unknown, so storage is judged after); the
        pool Healthy and no storage job; the VMs started again; volumes and disks checked

An abort at any step brings the cluster back up as far as it can (the service Automatic where a node answers,
Start-Cluster, the volumes online, the VMs that ran started) and says what is left.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import ClusterClient
from hciupgrade.models import RunOptions, Strict
from hciupgrade.psenums import NodeState, VMState, parse
from hciupgrade.records import RunRecorder
from hciupgrade.remote import RemoteError
from hciupgrade.upgrade.gates import storage_busy
from hciupgrade.upgrade.runbook import WAIT_STORAGE
from hciupgrade.upgrade.steps import StepFailed, Steps

# (phase, what to do to one node, the nodes) -> node -> its result or the exception it raised
Parallel = Callable[[str, Callable[[str], Any], list[str]], dict[str, Any]]


def in_threads(phase: str, action: Callable[[str], Any], nodes: list[str]) -> dict[str, Any]:
    """Every node at once, a thread each (a node's session serialises its own calls)."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes)), thread_name_prefix=phase) as pool:
        futures = {node: pool.submit(action, node) for node in nodes}
    return {node: (f.exception() or f.result()) for node, f in futures.items()}


def one_by_one(phase: str, action: Callable[[str], Any], nodes: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for node in nodes:
        try:
            results[node] = action(node)
        except Exception as e:  # noqa: BLE001 - the caller reads each node's exception
            results[node] = e
    return results


class OfflineOutcome(Strict):
    run_id: str
    cluster: str
    succeeded: bool
    phases: list[str] = Field(default_factory=list)
    builds_before: dict[str, str] = Field(default_factory=dict)
    builds_after: dict[str, str] = Field(default_factory=dict)
    left: list[str] = Field(default_factory=list, description="what the run could not bring back")
    error: str | None = None


class OfflineStopped(Exception):
    pass


@dataclass
class OfflineUpgrade:
    client: ClusterClient
    options: RunOptions
    recorder: RunRecorder
    clock: ClusterClock
    parallel: Parallel = in_threads
    stopped_vms: dict[str, str] = field(default_factory=dict)  # vm -> node: the VMs this run shut down
    touched: bool = False  # whether anything was changed (an abort before it has nothing to bring back)

    @property
    def nodes(self) -> list[str]:
        return list(self.client.sessions)

    def run(self) -> OfflineOutcome:
        outcome = OfflineOutcome(run_id=self.recorder.run_id, cluster=self.client.name, succeeded=False)
        self.recorder.emit(None, "run", "running", kind="offline")
        feature = Steps(self.client, self.options.model_copy(update={"update": "feature"}), self.clock, marked=False)
        lcu_options = self.options.model_copy(update={"update": "cumulative", "target_build": None})
        lcu = Steps(self.client, lcu_options, self.clock, marked=False)
        plan: list[tuple[str, Callable[[], None]]] = [
            ("check", self.check),
            ("shutdown-vms", self.shutdown_vms),
            ("volumes-offline", lambda: self.volumes(online=False)),
            ("stop-cluster", self.client.stop_cluster),
            ("cluster-service-disabled", lambda: self.cluster_service("Disabled")),
            ("feature-update", lambda: self.update_all(feature)),
            ("cumulative-update", lambda: self.update_all(lcu)),
            ("cluster-service-automatic", lambda: self.cluster_service("Automatic")),
            ("start-cluster", self.start_cluster),
            ("volumes-online", lambda: self.volumes(online=True)),
            (WAIT_STORAGE, lambda: feature.wait_storage("cluster", settled=True) and None),
            ("start-vms", self.start_vms),
            ("verify", self.verify),
        ]
        try:
            outcome.builds_before = self.builds()
            for phase, action in plan:
                with self.recorder.phase(None, phase):
                    action()
                self.touched = self.touched or phase != "check"
                outcome.phases.append(phase)
            outcome.succeeded = True
        except (OfflineStopped, StepFailed, RemoteError) as e:
            outcome.error = f"{phase}: {e}"
            if self.touched:
                outcome.left = self.bring_back()
                outcome.error += "; brought back as far as it could: " + (
                    "; ".join(outcome.left) or "nothing is left")
        outcome.builds_after = self.builds()
        self.recorder.emit(None, "run", "succeeded" if outcome.succeeded else "failed", kind="offline",
                           error=outcome.error, outcome=outcome.model_dump(mode="json"))
        return outcome

    # --- the phases ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        unreachable = [n for n in self.nodes if not self.client.reachable(n)]
        if unreachable:
            raise OfflineStopped(f"{', '.join(unreachable)} do not answer on WinRM: nothing was changed")
        snapshot = self.client.snapshot()
        problems = [f"node {n.name} is {n.state.name}" for n in snapshot.nodes if n.state != NodeState.Up]
        problems += storage_busy(snapshot)
        if problems:
            raise OfflineStopped("; ".join(problems) + ": nothing was changed")

    def shutdown_vms(self) -> None:
        for node in self.nodes:
            for vm in self.client.vms(node):
                if parse(VMState, vm["State"]) == VMState.Running:
                    self.client.vm_call(node, "Stop-VM", str(vm["Name"]))
                    self.stopped_vms[str(vm["Name"])] = node
                    self.touched = True

    def volumes(self, *, online: bool) -> None:
        for csv in self.client.csvs():
            if (str(csv["State"]) == "Online") != online:
                self.client.set_csv(str(csv["Name"]), online)
                self.touched = True

    def cluster_service(self, startup: str) -> None:
        failed = self._each(f"cluster service {startup}", lambda n: self.client.set_cluster_service(n, startup))
        if failed:
            raise OfflineStopped("; ".join(failed))

    def update_all(self, steps: Steps) -> None:
        """Every node that needs it at once: install, restart, back on the new build."""
        needing = [n for n in self.nodes if not steps.options.build_reached(self.client.os_build(n))]
        if not needing:
            return
        kind = steps.update.name
        for name, action in ((f"install-{kind}", steps.install),
                             (f"restart-{kind}", lambda n: self.restart_and_wait(steps, n))):
            results = self.parallel(name, action, needing)
            failed = [f"{n}: {r}" for n, r in results.items() if isinstance(r, BaseException)]
            if failed:
                raise OfflineStopped(f"{name}: " + "; ".join(failed))

    def restart_and_wait(self, steps: Steps, node: str) -> str:
        """Restart-Computer, see the node go, wait until WinRM answers on the new build. The cluster is stopped,
        so the node's own WinRM is the only witness."""
        before = self.client.os_build(node)
        self.client.restart(node, marked=False)
        timeout = steps.options.restart_timeout_minutes * 60
        polls = {"poll": steps.poll, "max_poll": steps.options.poll_max_seconds}

        def restarted() -> bool:  # gone, or back already on a new build: a quick restart can fall between polls
            if not self.client.reachable(node):
                return True
            try:
                build = self.client.os_build(node)
            except RemoteError:
                return True
            return build != before and steps.options.build_reached(build)

        if not self.clock.wait_for(restarted, timeout=timeout, **polls):
            raise StepFailed(node, "restart", "the node did not go down after Restart-Computer")
        if not self.clock.wait_for(lambda: self.client.reachable(node), timeout=timeout, **polls):
            raise StepFailed(node, "restart", f"not back {steps.options.restart_timeout_minutes:g} min after its "
                                              "restart")
        build = self.client.os_build(node)
        if not steps.options.build_reached(build):
            raise StepFailed(node, "restart", f"back on {build}, not on {steps.options.goal_build}")
        return build

    def start_cluster(self) -> None:
        """The cluster service started on every node that answers, each through its own session: Start-Cluster
        run on one node reaches the others, a second hop (its docs: it cannot be run remotely without CredSSP).
        The cluster forms once a majority of the votes run it."""
        failed = self._each("start the cluster service", self.client.start_cluster_service)
        if len(failed) == len(self.nodes):
            raise OfflineStopped("no node started its cluster service: " + "; ".join(failed))

        def all_up() -> bool:
            try:
                return all(n.state == NodeState.Up for n in self.client.nodes())
            except RemoteError:
                return False

        if not self.clock.wait_for(all_up, timeout=self.options.reboot_timeout_minutes * 60,
                                   poll=self.options.poll_seconds, max_poll=self.options.poll_max_seconds):
            raise OfflineStopped("not every node joined after Start-Cluster")

    def start_vms(self) -> None:
        for vm, node in list(self.stopped_vms.items()):
            self.client.vm_call(node, "Start-VM", vm)
            del self.stopped_vms[vm]

    def verify(self) -> None:
        problems = storage_busy(self.client.snapshot())
        problems += [f"{c['Name']} is {c['State']}" for c in self.client.csvs() if str(c["State"]) != "Online"]
        if problems:
            raise OfflineStopped("; ".join(problems))

    # --- an abort ------------------------------------------------------------------------------------------------
    def bring_back(self) -> list[str]:
        """Best effort, each part on its own: the cluster service Automatic where a node answers, Start-Cluster,
        the volumes online, the VMs this run shut down started. Returns what is left, each with its cause."""
        left: list[str] = []
        left += self._each("cluster service Automatic", lambda n: self.client.set_cluster_service(n, "Automatic"))
        try:
            down = any(n.state != NodeState.Up for n in self.client.nodes())
        except RemoteError:
            down = True  # no node answers for the cluster: it is stopped
        try:
            if down:
                self.start_cluster()
        except (OfflineStopped, RemoteError) as e:
            left.append(f"cluster not started: {e}")
        try:
            self.volumes(online=True)
        except RemoteError as e:
            left.append(f"volumes not online: {e}")
        try:
            self.start_vms()
        except RemoteError as e:
            left.append(f"VMs not started: {e}")
        left += [f"{vm} not started again (on {node})" for vm, node in self.stopped_vms.items()]
        self.recorder.emit(None, "bring-back", "failed" if left else "succeeded", left=left)
        return left

    def _each(self, what: str, action: Callable[[str], Any]) -> list[str]:
        results = one_by_one(what, action, self.nodes)
        return [f"{n}: {what} failed: {r}" for n, r in results.items() if isinstance(r, BaseException)]

    def builds(self) -> dict[str, str]:
        out = {}
        for n in self.nodes:
            try:
                out[n] = self.client.os_build(n)
            except RemoteError:
                out[n] = "unreachable"
        return out
