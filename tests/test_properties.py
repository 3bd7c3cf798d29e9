"""Property: on clusters of 2 to 8 nodes with random faults (every kind), random run options, a random kill point
and an operator who pauses a node at a random moment (before its gate, between its gate and its drain, while
another node is upgraded or resyncs), in both storage behaviours and every enum wire form, the engine (run,
killed, run again) never breaks DESIGN.md's invariants 1 to 4, never touches the operator's node, and never goes
on past more failed nodes than MaxFailedNodes allows. The engine runs against the simulator through in-process
sessions that keep the wire's object and error shapes (hciupgrade.sim.inprocess), so 150 examples fit in CI
(HCI_PROPERTY_EXAMPLES for more)."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import ClusterClient
from hciupgrade.models import ClusterInventory, CredentialRef, NodeEndpoint, RunOptions, Transport
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.remote import PackagedScript
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.inprocess import InProcessSession
from hciupgrade.sim.scenario import FaultKind, parse_scenario
from hciupgrade.upgrade.rolling import RollingUpgrade

FACTOR = 20000
KINDS = [kind.value for kind in FaultKind]
ENUMS = ["NodeState", "DrainStatus", "HealthStatus", "OperationalStatus", "JobState", "ScheduledTaskState",
         "GroupType", "CauRunState"]


class ProcessKilled(BaseException):
    """The orchestrator's process is gone: from here on it makes no call at all."""


class Operator:
    """Pauses (and drains) one node at one moment: at the k-th call of the orchestrator, or just before the
    orchestrator's drain of that very node reaches it (between its gate and its drain)."""

    def __init__(self, sim: SimCluster, node: str, when: str, at_call: int) -> None:
        self.sim, self.node, self.when, self.at_call = sim, node, when, at_call
        self.calls = 0
        self.fired = False
        self.paused = False  # whether the operator's pause happened (a node that is not Up cannot be paused)

    def before(self, call) -> None:  # noqa: ANN001
        self.calls += 1
        due = self.calls >= self.at_call if self.when == "at-call" else (
            isinstance(call, PackagedScript) and call.filename == "Suspend-NodeForUpgrade.ps1"
            and call.parameters.get("Name") == self.node)
        if due and not self.fired:
            self.fired = True
            with self.sim.lock:
                self.paused = self.sim.operator_pause(self.node)


class Killable:
    def __init__(self, session: InProcessSession, budget: list[int] | None, operator: Operator | None) -> None:
        self.session, self.budget, self.operator = session, budget, operator

    def run(self, call, *, timeout=None):  # noqa: ANN001 - NodeSession's interface
        if self.budget is not None:
            if self.budget[0] <= 0:
                raise ProcessKilled()
            self.budget[0] -= 1
        if self.operator is not None:
            self.operator.before(call)
        return self.session.run(call, timeout=timeout)

    def reset(self, *, graceful: bool = True) -> None:
        pass

    close = reset


@st.composite
def cases(draw):
    n = draw(st.integers(2, 8))
    names = [f"n{i + 1}" for i in range(n)]
    faults = []
    for node in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        faults.append({"node": node, "kind": draw(st.sampled_from(KINDS)),
                       "times": draw(st.one_of(st.none(), st.integers(1, 2)))})
    scenario = parse_scenario({
        "cluster": {"name": "prop", "nodes": [{"name": x} for x in names],
                    "vms": [{"name": f"vm-{x}", "owner": x, "memory_gb": 8} for x in names],
                    "volumes": [{"name": "Volume01", "size_gb": 1024}]},
        "durations": {"install_minutes": 10, "reboot_minutes": 4, "join_seconds": 10, "write_mb_per_s": 20,
                      "repair_mb_per_s": 400, "completed_job_linger_s": 30},
        "time_factor": FACTOR, "faults": faults,
        "knobs": {"storage_maintenance_mode": draw(st.booleans()),
                  "cluster_down_error": draw(st.sampled_from(["ClusterEndpointNotRegistered", "ClusterRpcConnection"])),
                  "enum_forms": {e: draw(st.sampled_from(["enum", "string", "integer"])) for e in ENUMS}}})
    options = RunOptions(
        max_failed_nodes=draw(st.one_of(st.none(), st.integers(0, n - 1))),
        max_retries_per_node=draw(st.integers(1, 2)),
        pre_update_script="C:\\Scripts\\pre.ps1", poll_seconds=30, gate_timeout_minutes=20,
        drain_timeout_minutes=10, reboot_timeout_minutes=10, repair_timeout_minutes=60,
        target_build=scenario.cluster.target_build)
    kill_after = draw(st.one_of(st.none(), st.integers(0, 40 * n)))
    operator = draw(st.one_of(st.none(), st.tuples(st.sampled_from(names), st.sampled_from(["at-call", "before-drain"]),
                                                   st.integers(0, 60 * n))))
    return scenario, options, kill_after, operator


def engine_for(sim: SimCluster, options: RunOptions, budget: list[int] | None = None,
               operator: Operator | None = None) -> RollingUpgrade:
    inventory = ClusterInventory(
        name=sim.name, nodes=[NodeEndpoint(name=x, address="127.0.0.1", port=5985) for x in sim.nodes],
        transport=Transport(scheme="http", auth="basic"), time_factor=FACTOR,
        credential=CredentialRef(username=SIM_USER, password_env="UNUSED"))
    sessions = {x: Killable(InProcessSession(sim, x, SIM_USER), budget, operator) for x in sim.nodes}
    client = ClusterClient(inventory, SecretStr("unused"), sessions=sessions)
    from hciupgrade.upgrade.steps import Steps

    recorder = RunRecorder(new_run_id(), sim.name, time_factor=FACTOR)
    return RollingUpgrade(client, options, recorder, Steps(client, options, ClusterClock(FACTOR)))


@settings(max_examples=int(os.environ.get("HCI_PROPERTY_EXAMPLES", "100")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_invariants_hold_under_random_faults_and_kills(case):
    scenario, options, kill_after, pause = case
    with tempfile.TemporaryDirectory() as home:
        os.environ["HCI_UPGRADE_HOME"] = home
        sim = SimCluster(scenario)
        operator = Operator(sim, *pause) if pause else None
        outcome = None
        if kill_after is not None:
            try:
                engine_for(sim, options, [kill_after], operator).run()
            except ProcessKilled:
                pass
        result, _ = engine_for(sim, options, None, operator).run()
        outcome = result.model_dump(mode="json")
        with sim.lock:
            events = list(sim.events)
    assert check_invariants(events, scenario, outcome, SIM_USER) == []
    if operator is not None and operator.paused:  # the operator's node: never taken over, and the run says so
        held = sim.nodes[operator.node]
        assert held.paused_by == "operator"
        mine = next(n for n in result.nodes if n.node == operator.node) if result.nodes else None
        if mine is not None and mine.result not in ("upgraded", "skipped"):
            assert not result.succeeded
    failed = [n for n in result.nodes if n.counts_as_failed]
    allowed = options.failed_nodes_allowed(len(scenario.cluster.nodes))
    assert len(failed) <= allowed + 1, f"went on after {len(failed)} failures, {allowed} allowed"
    if failed and not result.succeeded:
        assert result.error
    if not any(n.left_paused for n in failed) and len(failed) <= allowed:
        assert all(n.result != "not-started" for n in result.nodes) or not result.succeeded
