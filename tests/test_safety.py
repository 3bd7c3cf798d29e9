"""Safety at every moment of a run, with faults injected where a real cluster would feel them: an operator's pause
at any moment is never taken over, our own pause stays recognisable after a lost answer or a crash, and failures
are counted the way an operator reads them. The engine runs against the simulator through in-process sessions
(the wire's object and error shapes, no HTTP), so each case takes a fraction of a second."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import pytest
from pydantic import SecretStr

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import MARKER_KEY, ClusterClient
from hciupgrade.models import ClusterInventory, CredentialRef, NodeEndpoint, RunOptions, Transport
from hciupgrade.ownership import Held, LostOwnership
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.remote import Cmdlet, NodeUnreachable, PackagedScript
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.inprocess import InProcessSession
from hciupgrade.sim.scenario import make_scenario
from hciupgrade.upgrade.rolling import RollingUpgrade
from hciupgrade.upgrade.steps import Steps
from tests.conftest import record_text

FACTOR = 20000
Hook = Callable[[str, Any], None]


def starts_update(call: Any) -> bool:
    """The call that registers and starts the update's installer (from then on, setup runs on the node)."""
    return isinstance(call, PackagedScript) and call.filename.startswith("Register-") and "Start" in call.parameters


def runs_command(call: Any, name: str) -> bool:
    """The call runs that cmdlet: alone, or as an owned change (Invoke-OwnedCommand.ps1 -Command)."""
    if isinstance(call, PackagedScript):
        return call.filename == "Invoke-OwnedCommand.ps1" and call.parameters.get("Command") == name
    return isinstance(call, Cmdlet) and call.name == name


class Killed(BaseException):
    """The orchestrator's process died here."""


class Session:
    """An in-process session with hooks: `before(node, call)` runs before a call reaches the node, `after(node,
    call)` after it ran there (raising in `after` loses the answer the node already acted on). Once a hook
    raised Killed, the process is dead: no session of it makes another call."""

    def __init__(self, sim: SimCluster, node: str, hooks: dict[str, Hook]) -> None:
        self.inner, self.node, self.hooks = InProcessSession(sim, node, SIM_USER), node, hooks
        self.call_seconds: list[float] = []

    def run(self, call: Any, *, timeout: float | None = None) -> Any:
        if self.hooks.get("dead"):
            raise Killed()
        try:
            if "before" in self.hooks:
                self.hooks["before"](self.node, call)
            result = self.inner.run(call, timeout=timeout)
            if "after" in self.hooks:
                self.hooks["after"](self.node, call)
        except Killed:
            self.hooks["dead"] = True  # type: ignore[assignment]
            raise
        return result

    def reset(self, *, graceful: bool = True) -> None:
        pass

    close = reset


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))


def engine(sim: SimCluster, hooks: dict[str, Hook] | None = None, **options: Any) -> RollingUpgrade:
    inventory = ClusterInventory(
        name=sim.name, nodes=[NodeEndpoint(name=x, address="127.0.0.1", port=5985) for x in sim.nodes],
        transport=Transport(scheme="http", auth="basic"), time_factor=FACTOR,
        credential=CredentialRef(username=SIM_USER, password_env="UNUSED"))
    client = ClusterClient(inventory, SecretStr("unused"),
                           sessions={x: Session(sim, x, hooks or {}) for x in sim.nodes})
    defaults = {"poll_seconds": 30, "gate_timeout_minutes": 20}
    if options.get("update") != "cumulative":
        defaults["target_build"] = sim.target_build
    opts = RunOptions(**{**defaults, **options})
    recorder = RunRecorder(new_run_id(), sim.name, time_factor=FACTOR)
    return RollingUpgrade(client, opts, recorder, Steps(client, opts, ClusterClock(FACTOR)))


def cluster(nodes: int = 3, **kw: Any) -> SimCluster:
    return SimCluster(make_scenario(nodes=nodes, vms_per_node=1, time_factor=FACTOR, **kw))


def is_drain_of(call: Any, node: str) -> bool:
    return isinstance(call, PackagedScript) and call.filename == "Suspend-NodeForUpgrade.ps1" \
        and call.parameters.get("Name") == node


def touched_by_us(sim: SimCluster, node: str) -> list[str]:
    return [e["kind"] for e in sim.events if e.get("node") == node and e.get("by") == SIM_USER
            and e["kind"] in ("suspend", "drain", "restart", "install", "task_registered", "resume")]


def audit(sim: SimCluster, outcome: Any) -> list[str]:
    return check_invariants(list(sim.events), sim.scenario, outcome.model_dump(mode="json"), SIM_USER)


def operator_pauses(sim: SimCluster, node: str) -> None:
    with sim.lock:
        assert sim.operator_pause(node)


# --- 1. a pause that is not ours is sacred, at any moment ------------------------------------------------------
def test_a_node_paused_between_our_gate_and_our_drain_is_never_taken_over():
    sim = cluster()
    fired = []

    def before(node: str, call: Any) -> None:
        if is_drain_of(call, "node2") and not fired:
            fired.append(True)
            operator_pauses(sim, "node2")

    outcome, _ = engine(sim, {"before": before}, node_order=["node1", "node2", "node3"], max_failed_nodes=1).run()
    assert touched_by_us(sim, "node2") == []  # never drained, installed on, restarted or resumed
    assert sim.nodes["node2"].state.name == "Paused" and sim.nodes["node2"].paused_by == "operator"
    node2 = next(n for n in outcome.nodes if n.node == "node2")
    assert node2.result == "not-started" and node2.refused and node2.attempts == 1
    assert "node2 is Paused, paused by someone else (no hci-upgrade mark)" in node2.error
    assert not outcome.succeeded and "node2" in outcome.error
    assert next(n for n in outcome.nodes if n.node == "node1").result == "upgraded"
    assert sim.nodes["node2"].marker is None  # our mark never landed on it
    assert audit(sim, outcome) == []


def maintenance(sim: SimCluster, on: bool) -> SimCluster:
    knobs = sim.scenario.knobs.model_copy(update={"storage_maintenance_mode": on})
    return SimCluster(sim.scenario.model_copy(update={"knobs": knobs}))


@pytest.mark.parametrize("maintenance_mode", [True, False])
def test_a_node_paused_while_the_run_finishes_the_node_before_it_stops_the_run_and_is_named(maintenance_mode):
    sim = maintenance(cluster(), maintenance_mode)
    fired = []

    def before(node: str, call: Any) -> None:  # during node1's resync wait, after its resume
        if node == "node1" and isinstance(call, PackagedScript) and call.filename == "Wait-StorageRepair.ps1" \
                and not fired and any(e["kind"] == "resume" and e["node"] == "node1" for e in sim.events):
            fired.append(True)
            operator_pauses(sim, "node2")

    outcome, _ = engine(sim, {"before": before}, node_order=["node1", "node2", "node3"], max_failed_nodes=0).run()
    assert fired and touched_by_us(sim, "node2") == [] and touched_by_us(sim, "node3") == []
    if maintenance_mode:  # its drives left with its pause: node1's resync cannot finish, and the run says why
        assert outcome.error.startswith("storage: ") and "node node2 is Paused" in outcome.error
    else:
        assert "MaxFailedNodesExceeded" in outcome.error and "node2: paused by someone else" in outcome.error
    assert audit(sim, outcome) == []


def test_the_dry_run_shows_the_steps_an_adopted_node_will_really_run():
    sim = cluster(nodes=2)

    def after(node: str, call: Any) -> None:
        if starts_update(call):
            raise Killed()

    with pytest.raises(Killed):
        engine(sim, {"after": after}, node_order=["node1", "node2"]).run()
    _, pre = engine(sim).run(dry_run=True)
    node1 = next(p for p in pre.plan if p.node == "node1")
    assert node1.action == "adopt" and node1.position == "ours-paused"
    assert node1.steps == ("gate-adopted", "stop-vms", "drain", "install", "reboot", "wait-back", "wait-repair",
                           "resume", "start-vms", "wait-storage")
    outcome, _ = engine(sim).run()
    assert outcome.succeeded
    assert sum(1 for e in sim.events if e["kind"] == "suspend" and e["node"] == "node1") == 1  # not drained twice
    assert audit(sim, outcome) == []


@pytest.mark.parametrize("then", ["retried", "killed"])
def test_our_pause_is_recognised_after_its_answer_was_lost(then):
    """The node paused itself under our mark, the answer never came back; then the attempt is retried within the
    run, or the process dies and the next run takes over. Either way the pause is recognised as ours."""
    sim = cluster(nodes=2)
    lost = []

    def after(node: str, call: Any) -> None:
        if is_drain_of(call, "node1") and not lost:
            lost.append(True)
            raise NodeUnreachable(node, "ConnectionError: connection reset") if then == "retried" else Killed()

    if then == "retried":
        outcome, _ = engine(sim, {"after": after}, node_order=["node1", "node2"]).run()
        # recovered as ours (resumed under our mark), then the whole node again: never "paused by someone else"
        assert any(e["kind"] == "resume" and e["node"] == "node1" and e["by"] == SIM_USER for e in sim.events)
    else:
        with pytest.raises(Killed):
            engine(sim, {"after": after}, node_order=["node1", "node2"]).run()
        outcome, pre = engine(sim, node_order=["node1", "node2"]).run()
        assert next(p for p in pre.plan if p.node == "node1").action == "adopt"
        assert sum(1 for e in sim.events if e["kind"] == "suspend" and e["node"] == "node1") == 1
    assert lost and outcome.succeeded
    assert all(n.marker is None for n in sim.nodes.values())  # every mark removed with its resume
    assert audit(sim, outcome) == []


def test_after_a_crash_an_intended_pause_that_never_landed_is_not_ours():
    """Killed after recording the intent to pause node1, before the call reached it; then an operator pauses
    node1. The record alone says "ours"; the missing mark says otherwise, and the mark wins."""
    sim = cluster(nodes=3)

    def before(node: str, call: Any) -> None:
        if is_drain_of(call, "node1"):
            raise Killed()

    with pytest.raises(Killed):
        engine(sim, {"before": before}, node_order=["node1", "node2", "node3"]).run()
    operator_pauses(sim, "node1")
    outcome, pre = engine(sim, node_order=["node1", "node2", "node3"]).run()
    assert touched_by_us(sim, "node1") == []
    assert not outcome.succeeded and "node1 paused by someone else" in outcome.error
    assert sim.nodes["node1"].paused_by == "operator"
    assert audit(sim, outcome) == []


def test_a_stale_mark_on_a_node_that_is_up_again_is_removed():
    """An operator resumed our node while the run was dead: the mark must not make their next pause look ours."""
    sim = cluster(nodes=2)

    def before(node: str, call: Any) -> None:
        if starts_update(call):
            raise Killed()

    with pytest.raises(Killed):
        engine(sim, {"before": before}, node_order=["node1", "node2"]).run()
    assert sim.nodes["node1"].marker is not None
    with sim.lock:
        sim.resume("node1", failback="Immediate", by="operator")
    later = engine(sim)
    later.reconcile()
    assert sim.nodes["node1"].marker is not None  # a change waits for the cluster's lock and a fence
    later.own(None)
    assert sim.nodes["node1"].marker is None


# --- 2. failures counted the way an operator reads them ----------------------------------------------------------
def test_a_stalled_repair_is_waited_for_once_and_named_by_volume_and_job():
    sim = cluster(nodes=3, faults=[{"node": "node1", "kind": "repair_stalls", "at_percent": 40}])
    outcome, _ = engine(sim, node_order=["node1", "node2", "node3"], repair_timeout_minutes=60,
                        max_retries_per_node=3).run()
    node1 = next(n for n in outcome.nodes if n.node == "node1")
    assert node1.result == "upgraded" and node1.build_after == sim.target_build
    assert node1.storage_healthy is False and node1.attempts == 1  # not once per MaxRetriesPerNode attempt
    assert outcome.error.startswith("storage: ")
    # the three disks' repair jobs are alike: counted once, not named three times
    assert "Volume01" in outcome.error and "3 storage jobs Repair (40%) are Running" in outcome.error
    assert outcome.error.count("Repair (40%)") == 1
    assert touched_by_us(sim, "node2") == []
    assert sim.nodes["node1"].state.name == "Up"
    assert audit(sim, outcome) == []


@pytest.mark.parametrize("maintenance_mode", [True, False])
def test_a_repair_that_stalls_before_the_resume_still_brings_the_node_back(maintenance_mode):
    sim = maintenance(cluster(nodes=2, faults=[{"node": "node1", "kind": "repair_stalls"}]), maintenance_mode)
    outcome, _ = engine(sim, node_order=["node1", "node2"], repair_timeout_minutes=30).run()
    assert not outcome.succeeded and "storage" in outcome.error
    assert sim.nodes["node1"].state.name == "Up" and outcome.left_paused == []
    assert audit(sim, outcome) == []


def test_a_gate_that_never_opens_leaves_the_node_not_started_and_is_not_retried():
    sim = cluster(nodes=3)
    operator_pauses(sim, "node3")  # after the preflight would have seen it: paused by hand, mid-run
    run = engine(sim, node_order=["node1", "node2", "node3"], gate_timeout_minutes=5, max_retries_per_node=3)
    outcome, _ = run.run()  # the preflight sees node3 paused and blocks: nothing touched at all
    assert "node3 paused by someone else" in outcome.error and touched_by_us(sim, "node1") == []

    sim = cluster(nodes=3)
    reads = []

    def before(node: str, call: Any) -> None:  # node1's first position read: its own attempt, after the plan
        if node == "node1" and isinstance(call, PackagedScript) and call.filename == "Get-NodePosition.ps1":
            reads.append(True)
            if len(reads) == 1:
                operator_pauses(sim, "node3")

    outcome, _ = engine(sim, {"before": before}, node_order=["node1", "node2", "node3"], gate_timeout_minutes=5,
                        max_retries_per_node=3).run()
    node1 = next(n for n in outcome.nodes if n.node == "node1")
    assert node1.result == "not-started" and node1.attempts == 1 and not node1.refused
    assert "not safe to drain" in outcome.error and "node node3 is Paused" in outcome.error
    assert touched_by_us(sim, "node1") == []
    assert audit(sim, outcome) == []


def test_a_run_that_fails_before_its_preflight_names_the_node_it_left_mid_upgrade():
    sim = cluster(nodes=2)

    def after(node: str, call: Any) -> None:
        if runs_command(call, "Restart-Computer"):
            raise Killed()

    with pytest.raises(Killed):
        engine(sim, {"after": after}, node_order=["node1", "node2"]).run()
    with sim.lock:
        sim.nodes["node2"].winrm_up = False  # and the other node does not answer either
    outcome, _ = engine(sim).run()
    assert not outcome.succeeded
    assert "no node of the cluster answered" in outcome.error
    assert "left paused or down by a run of ours: node1" in outcome.error and outcome.left_paused == ["node1"]
    assert audit(sim, outcome) == []


def test_the_credential_never_reaches_a_record():
    sim = cluster(nodes=2)
    run = engine(sim)
    outcome, _ = run.run()
    assert outcome.succeeded
    assert "unused" not in record_text(run.recorder.run_id)
    assert os.environ.get("HCI_UPGRADE_HOME")


def test_the_mark_is_what_an_operator_sees_on_the_node():
    sim = cluster(nodes=2)
    seen = []

    def before(node: str, call: Any) -> None:
        if starts_update(call):
            seen.append(dict(sim.nodes[node].marker or {}))

    run = engine(sim, {"before": before}, node_order=["node1", "node2"])
    run.run()
    assert seen[0]["PausedByRun"] == run.recorder.run_id and seen[0]["PausedBy"] == SIM_USER
    value = run.client.session("node1").run(Cmdlet("Get-ItemProperty", {"Path": MARKER_KEY}))
    assert value.objects == [] and value.errors[0].error_id == "PathNotFound"  # gone after the resume


# --- 3. a run that lost the cluster acts on nothing (invariant 8) ------------------------------------------------
class Lease:
    """The lock's lease as the run sees it: `lapse()` is the moment it stopped being current (a run frozen past
    its lease, a Prefect server out of reach)."""

    def __init__(self) -> None:
        self.lapsed = False

    def lapse(self) -> None:
        self.lapsed = True

    def check(self) -> None:
        if self.lapsed:
            raise LostOwnership("the cluster lock's lease was last confirmed 210 s ago (lease 60 s)")


def held_engine(sim: SimCluster, lease: Lease, hooks: dict[str, Hook] | None = None, **options: Any
                ) -> RollingUpgrade:
    run = engine(sim, hooks, **options)

    @contextmanager
    def lock() -> Iterator[Held]:
        yield Held(check=lease.check, lease_id="lease-1")

    run.lock = lock
    return run


def changes_after(sim: SimCluster, seq: int, run_id: str) -> list[str]:
    return [f"{e['kind']} {e['node']}" for e in sim.events[seq:] if e.get("run") == run_id]


def test_a_run_whose_lease_lapsed_mid_install_does_nothing_more_and_names_the_node():
    sim, lease = cluster(nodes=3), Lease()
    frozen: list[int] = []

    def after(node: str, call: Any) -> None:
        if starts_update(call) and node == "node2":
            lease.lapse()  # frozen here: by the time it runs again, its lease has lapsed
            frozen.append(len(sim.events))

    run = held_engine(sim, lease, {"after": after}, node_order=["node1", "node2", "node3"])
    outcome, _ = run.run()
    assert not outcome.succeeded and outcome.error.startswith("LostOwnership: ")
    assert "left as they are, to the run that holds the cluster now" in outcome.error and "node2" in outcome.error
    assert changes_after(sim, frozen[0], run.recorder.run_id) == []  # no restart, no stop of setup, no resume
    assert [e["kind"] for e in sim.events[frozen[0]:] if e["kind"] in ("restart", "resume", "suspend")] == []
    assert {n.node: n.result for n in outcome.nodes}["node1"] == "upgraded"
    assert audit(sim, outcome) == []


def test_a_newer_run_fence_refuses_the_woken_run_in_the_same_call_that_would_have_restarted_the_node():
    """Run A is frozen after its install started on node2; run B takes the cluster (a newer fence on every node,
    node2's mark taken over). A wakes up with a lease that still looks current to it (frozen between its check and
    its call): the node itself refuses A's restart, and A stops."""
    sim = cluster(nodes=3)
    lease_a = Lease()
    woken: list[int] = []

    def after(node: str, call: Any) -> None:
        if starts_update(call) and node == "node2" and not woken:
            # B: a run that finds A dead takes the cluster over while A sleeps
            b = engine(sim, node_order=["node1", "node2", "node3"])
            b.recorder.emit(None, "run", "running")
            b.reconcile()
            b.owned.update({"node2": a.recorder.run_id})
            b.own(Held())
            assert sim.nodes["node2"].marker["PausedByRun"] == b.recorder.run_id
            woken.append(len(sim.events))

    a = engine(sim, {"after": after}, node_order=["node1", "node2", "node3"])
    a.lock = lambda: nullcontext(Held(check=lease_a.check))
    outcome, _ = a.run()
    assert not outcome.succeeded and outcome.error.startswith("LostOwnership: "), outcome.error
    assert "a newer run holds it" in outcome.error
    refused = [e for e in sim.events[woken[0]:] if e["kind"] == "fenced_out"]
    assert refused and refused[0]["node"] == "node2"  # the node said no, in the call that carried the change
    assert changes_after(sim, woken[0], a.recorder.run_id) == []
    assert sim.nodes["node2"].state.name == "Paused" and sim.nodes["node2"].marker["PausedByRun"] != \
        a.recorder.run_id  # left to B, as B left it
    assert [v for v in audit(sim, outcome) if v.startswith("invariant 8")] == []


def test_the_audit_catches_a_change_made_under_an_older_fence():
    sim = cluster(nodes=2)
    with sim.lock:
        with sim.acting_for("run-b", 2):
            sim.claim_fence("node1", "run-b", 2, by=SIM_USER)
        with sim.acting_for("run-a", 1):
            sim.restart("node2", by=SIM_USER)
    violations = check_invariants(sim.events, sim.scenario, {"succeeded": False, "error": "x"}, SIM_USER)
    assert any(v.startswith("invariant 8: ") and "run run-a (fence 1)" in v for v in violations), violations


def test_fences_grow_with_each_run_that_takes_the_cluster_and_every_node_is_shown_the_newest():
    sim = cluster(nodes=3)
    first = engine(sim)
    assert first.run()[0].succeeded
    second = engine(sim)
    second.run()
    fences = [e["fence"] for e in sim.events if e["kind"] == "fence"]
    assert fences == sorted(fences) and fences[0] < fences[-1]
    assert {n.fence["Fence"] for n in sim.nodes.values()} == {fences[-1]}
    assert {n.fence["RunId"] for n in sim.nodes.values()} == {second.recorder.run_id}
