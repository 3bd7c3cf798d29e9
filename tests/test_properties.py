"""Property: on clusters of 2 to 8 nodes with random faults, random run options and a random kill point, the
engine (run, killed, run again) never breaks DESIGN.md's invariants 1 to 4, and never goes on past more failed
nodes than MaxFailedNodes allows. The engine runs against the simulator through in-process sessions that keep the
wire's object shapes (hciupgrade.sim.inprocess), so 200 examples fit in CI."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import ClusterClient
from hciupgrade.engine import RollingUpgrade
from hciupgrade.models import ClusterInventory, CredentialRef, NodeEndpoint, RunOptions, Transport
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.inprocess import InProcessSession
from hciupgrade.sim.scenario import parse_scenario

FACTOR = 20000
KINDS = ["drain_fails", "install_fails", "no_return", "repair_stalls", "pre_script_fails"]


class ProcessKilled(BaseException):
    """The orchestrator's process is gone: from here on it makes no call at all."""


class Killable:
    def __init__(self, session: InProcessSession, budget: list[int]) -> None:
        self.session, self.budget = session, budget

    def run(self, call, *, timeout=None):  # noqa: ANN001 - NodeSession's interface
        if self.budget[0] <= 0:
            raise ProcessKilled()
        self.budget[0] -= 1
        return self.session.run(call, timeout=timeout)

    def reset(self) -> None:
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
        "time_factor": FACTOR, "faults": faults})
    options = RunOptions(
        max_failed_nodes=draw(st.one_of(st.none(), st.integers(0, n - 1))),
        max_retries_per_node=draw(st.integers(1, 2)),
        pre_update_script="C:\\Scripts\\pre.ps1", poll_seconds=30, gate_timeout_minutes=20,
        drain_timeout_minutes=10, reboot_timeout_minutes=10, repair_timeout_minutes=60,
        target_build=scenario.cluster.target_build)
    kill_after = draw(st.one_of(st.none(), st.integers(0, 40 * n)))
    return scenario, options, kill_after


def engine_for(sim: SimCluster, options: RunOptions, budget: list[int] | None) -> RollingUpgrade:
    inventory = ClusterInventory(
        name=sim.name, nodes=[NodeEndpoint(name=x, address="127.0.0.1", port=5985) for x in sim.nodes],
        transport=Transport(scheme="http", auth="basic"), time_factor=FACTOR,
        credential=CredentialRef(username=SIM_USER, password_env="UNUSED"))
    sessions = {x: InProcessSession(sim, x, SIM_USER) for x in sim.nodes}
    if budget is not None:
        sessions = {x: Killable(s, budget) for x, s in sessions.items()}
    client = ClusterClient(inventory, SecretStr("unused"), sessions=sessions)
    from hciupgrade.steps import Steps

    recorder = RunRecorder(new_run_id(), sim.name, time_factor=FACTOR)
    return RollingUpgrade(client, options, recorder, Steps(client, options, ClusterClock(FACTOR)))


@settings(max_examples=int(os.environ.get("HCI_PROPERTY_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_invariants_hold_under_random_faults_and_kills(case):
    scenario, options, kill_after = case
    with tempfile.TemporaryDirectory() as home:
        os.environ["HCI_UPGRADE_HOME"] = home
        sim = SimCluster(scenario)
        outcome = None
        if kill_after is not None:
            try:
                engine_for(sim, options, [kill_after]).run()
            except ProcessKilled:
                pass
        result, _ = engine_for(sim, options, None).run()
        outcome = result.model_dump(mode="json")
        with sim.lock:
            events = list(sim.events)
    assert check_invariants(events, scenario, outcome, SIM_USER) == []
    failed = [n for n in result.nodes if n.result == "failed"]
    allowed = options.failed_nodes_allowed(len(scenario.cluster.nodes))
    assert len(failed) <= allowed + 1, f"went on after {len(failed)} failures, {allowed} allowed"
    if failed and not result.succeeded:
        assert result.error
    if not any(n.left_paused for n in failed) and len(failed) <= allowed:
        assert all(n.result != "not-started" for n in result.nodes) or not result.succeeded
