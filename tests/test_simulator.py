"""The simulated cluster's state machine on its own: the real cluster's rules, without any remoting."""

from __future__ import annotations

import pytest

from hciupgrade.psenums import DrainStatus, HealthStatus, NodeState
from hciupgrade.sim.cluster import ERROR_CLUSTER_SPACE_DEGRADED, Refused, SimCluster
from hciupgrade.sim.scenario import make_scenario, parse_scenario


def drive(sim: SimCluster, seconds: float) -> None:
    sim.clock.advance(seconds)
    sim.advance()


def test_suspend_pauses_first_and_drains_after():
    sim = SimCluster(make_scenario(nodes=3))
    sim.suspend("node1", drain=True, force_drain=False, by="t")
    node = sim.nodes["node1"]
    assert node.state == NodeState.Paused and node.drain_status == DrainStatus.InProgress
    drive(sim, 600)
    assert node.drain_status == DrainStatus.Completed
    assert not [vm for vm in sim.vms.values() if vm.owner == "node1"]


def test_a_second_node_cannot_be_paused_while_one_is_away():
    sim = SimCluster(make_scenario(nodes=3))
    sim.suspend("node1", drain=True, force_drain=False, by="t")
    with pytest.raises(Refused) as caught:
        sim.suspend("node2", drain=True, force_drain=False, by="t")
    assert caught.value.code == ERROR_CLUSTER_SPACE_DEGRADED


def test_a_rebooted_node_returns_paused_and_repair_starts_on_resume():
    sim = SimCluster(make_scenario(nodes=3))
    sim.suspend("node1", drain=True, force_drain=False, by="t")
    drive(sim, 600)
    sim.restart("node1", by="t")
    assert sim.nodes["node1"].state == NodeState.Down and not sim.reachable("node1")
    drive(sim, sim.durations.reboot_minutes * 60 + sim.durations.join_seconds + 1)
    assert sim.nodes["node1"].state == NodeState.Paused and sim.reachable("node1")
    assert not sim.jobs  # drives still in storage maintenance mode
    sim.resume("node1", failback="Immediate", by="t")
    assert sim.running_jobs() and all(d.health == HealthStatus.Warning for d in sim.disks.values())
    drive(sim, 24 * 3600)
    assert all(d.health == HealthStatus.Healthy for d in sim.disks.values())


def test_the_pre_21h2_knob_starts_repair_when_the_node_is_back():
    data = make_scenario(nodes=3).model_dump()
    data["knobs"] = {"storage_maintenance_mode": False}
    sim = SimCluster(parse_scenario(data))
    sim.suspend("node1", drain=True, force_drain=False, by="t")
    drive(sim, 600)
    sim.restart("node1", by="t")
    drive(sim, sim.durations.reboot_minutes * 60 + sim.durations.join_seconds + 1)
    assert sim.nodes["node1"].state == NodeState.Paused
    assert sim.running_jobs()


def test_repair_time_grows_with_the_time_away():
    def repair_bytes(away_minutes: float) -> int:
        sim = SimCluster(make_scenario(nodes=3))
        sim.suspend("node1", drain=False, force_drain=False, by="t")
        drive(sim, away_minutes * 60)
        sim.resume("node1", failback="NoFailback", by="t")
        return sum(j.bytes_total for j in sim.jobs)

    assert repair_bytes(90) == pytest.approx(3 * repair_bytes(30), rel=0.01)


def test_a_drain_fault_leaves_the_node_paused_with_its_vm():
    sim = SimCluster(make_scenario(nodes=3, faults=[{"node": "node1", "kind": "drain_fails", "vm": "vm-node1-2"}]))
    sim.suspend("node1", drain=True, force_drain=False, by="t")
    drive(sim, 3600)
    assert sim.nodes["node1"].drain_status == DrainStatus.Failed
    assert sim.vms["vm-node1-2"].owner == "node1"
