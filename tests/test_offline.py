"""The fast offline path on the simulated cluster: the whole cluster down, every node updated at once (feature
update, then cumulative update), back up with healthy storage; an abort brings it back as far as it can and says
what is left. The engine runs through in-process sessions (the wire's shapes, no HTTP)."""

from __future__ import annotations

from functools import partial

import pytest

from hciupgrade.clock import ClusterClock
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.scenario import make_scenario
from hciupgrade.upgrade.offline import OfflineUpgrade
from tests.test_safety import engine

FACTOR = 20000


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))


def offline(sim: SimCluster, **options) -> OfflineUpgrade:
    run = engine(sim, **options)
    recorder = RunRecorder(new_run_id(), sim.name, time_factor=FACTOR)
    run.client.own(recorder.run_id, partial(recorder.store.next_fence, sim.name))  # as the flow does, under the lock
    return OfflineUpgrade(run.client, run.options, recorder, ClusterClock(FACTOR))


def test_the_whole_cluster_is_updated_at_once_and_comes_back_healthy():
    sim = SimCluster(make_scenario(nodes=3, vms_per_node=2, time_factor=FACTOR))
    outcome = offline(sim).run()
    assert outcome.succeeded, outcome.error
    assert set(outcome.builds_after.values()) == {sim.lcu_build}
    assert outcome.phases[-1] == "verify"
    assert sim.cluster_running and all(n.state.name == "Up" for n in sim.nodes.values())
    assert all(sim.csv_online.values()) and all(vm.running for vm in sim.vms.values())
    kinds = [e["kind"] for e in sim.events]
    assert kinds.index("cluster") < kinds.index("restart")  # stopped before any restart
    # every node restarted at once for the feature update: all three were down before the first came back (how
    # close the restarts fall in cluster time depends on the machine's load at x20000, so not asserted)
    first_up = kinds.index("os_up")
    assert {e["node"] for e in sim.events[:first_up] if e["kind"] == "restart"} == set(sim.nodes)
    assert not any(e["kind"] == "vm" and e.get("status") == "Crashed" for e in sim.events)  # shut down first
    services = [e for e in sim.events if e["kind"] == "service" and e.get("name") == "ClusSvc"]
    # Disabled, Automatic, then started on each node through its own session: no second hop (Start-Cluster from
    # one node is refused on the others without delegation, and the cluster stayed stopped)
    assert [e.get("startup") or e["status"] for e in services] == ["Disabled"] * 3 + ["Automatic"] * 3 + \
        ["Running"] * 3
    assert sorted(e["node"] for e in services if e.get("status") == "Running") == ["node1", "node2", "node3"]


def test_a_node_that_does_not_return_aborts_and_the_cluster_comes_back_as_far_as_it_can():
    sim = SimCluster(make_scenario(nodes=3, vms_per_node=1, time_factor=FACTOR,
                                   faults=[{"node": "node2", "kind": "no_return"}]))
    outcome = offline(sim, FeatureUpdateRebootTimeoutMinutes=90).run()
    assert not outcome.succeeded and "restart-feature" in outcome.error and "node2" in outcome.error
    assert sim.cluster_running  # two of three nodes and the witness: quorum, started again
    assert sim.nodes["node1"].state.name == "Up" and sim.nodes["node3"].state.name == "Up"
    assert all(sim.csv_online.values())
    assert sim.nodes["node1"].clussvc_startup == "Automatic"
    assert any("node2" in item for item in outcome.left)  # the node that is still away is named
    assert "brought back as far as it could" in outcome.error


def test_an_unhealthy_cluster_is_not_touched():
    sim = SimCluster(make_scenario(nodes=3, vms_per_node=1, time_factor=FACTOR))
    with sim.lock:
        sim.operator_pause("node3")
    outcome = offline(sim).run()
    assert not outcome.succeeded and "nothing was changed" in outcome.error
    assert sim.cluster_running and not any(e["kind"] in ("cluster", "restart", "csv") for e in sim.events)
