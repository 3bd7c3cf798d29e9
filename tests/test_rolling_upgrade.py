"""The rolling upgrade, end to end: the Prefect flow drives a simulated cluster through the real pypsrp client and
the fake WinRM endpoints. Every run's event log is checked against DESIGN.md's invariants 1 to 4 (conftest)."""

from __future__ import annotations

import pytest

from hciupgrade.sim.scenario import make_scenario

FAST = 5000  # cluster seconds per wall second


@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_every_node_ends_on_the_target_build(run_upgrade, nodes):
    run = run_upgrade(make_scenario(nodes=nodes, time_factor=FAST))
    assert run.state.is_completed()
    assert run.outcome["succeeded"]
    assert [n["result"] for n in run.outcome["nodes"]] == ["upgraded"] * nodes
    for node in run.outcome["nodes"]:
        assert node["build_before"] == "10.0.20349.2966"
        assert node["build_after"] == "10.0.25398.1486"
    # storage resynced after each node, and every node is back in service
    finals = {}
    for e in run.events:
        if e["kind"] == "node_state":
            finals[e["node"]] = e["new"]
    assert set(finals.values()) == {"Up"}
    assert sum(1 for e in run.events if e["kind"] == "storage_job" and e["status"] == "Completed") >= nodes


def test_nodes_go_fewest_roles_first_and_one_at_a_time(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=0, time_factor=FAST).model_copy(deep=True)
    data = scenario.model_dump()
    data["cluster"]["vms"] = [{"name": f"vm{i}", "owner": owner} for i, owner in
                              enumerate(["node1", "node1", "node1", "node2", "node3", "node3"])]
    from hciupgrade.sim.scenario import parse_scenario

    run = run_upgrade(parse_scenario(data))
    suspends = [e["node"] for e in run.events if e["kind"] == "suspend"]
    assert suspends == ["node2", "node3", "node1"]
    # the next node is drained only after the previous one's resync completed
    kinds = [(e["kind"], e.get("status")) for e in run.events if e["kind"] in ("suspend", "storage_job")]
    for i, (kind, _) in enumerate(kinds):
        if kind == "suspend" and i:
            assert kinds[i - 1] == ("storage_job", "Completed")


def test_a_node_already_on_the_target_build_is_skipped(run_upgrade):
    run = run_upgrade(make_scenario(nodes=2, time_factor=FAST, build="10.0.25398.1486"))
    assert run.outcome["succeeded"]
    assert [n["result"] for n in run.outcome["nodes"]] == ["skipped", "skipped"]
    assert not run.touched("node1") and not run.touched("node2")


def test_a_vm_that_will_not_migrate_stops_the_run_and_the_node_is_resumed(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node2", "kind": "drain_fails"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"])
    assert not run.outcome["succeeded"] and run.state.is_failed()
    assert "node2" in run.outcome["error"] and "drain" in run.outcome["error"]
    assert run.node("node1")["result"] == "upgraded"
    failed = run.node("node2")
    assert failed["result"] == "failed" and not failed["left_paused"]
    assert any(e["kind"] == "resume" and e["node"] == "node2" for e in run.events)
    assert not run.touched("node3")


def test_a_failed_install_stops_the_run_and_the_node_keeps_its_build(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node1", "kind": "install_fails"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"])
    assert not run.outcome["succeeded"]
    assert "setup failed with exit code 0xc1900101" in run.outcome["error"]
    assert run.node("node1")["result"] == "failed"
    assert not any(e["kind"] == "build" for e in run.events)
    assert not any(e["kind"] == "restart" for e in run.events)  # never restarted onto a failed setup
    assert not run.touched("node2") and not run.touched("node3")


def test_a_node_that_does_not_come_back_is_named_and_left_for_the_operator(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node2", "kind": "no_return"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], reboot_timeout_minutes=20)
    assert not run.outcome["succeeded"]
    failed = run.node("node2")
    assert failed["result"] == "failed" and failed["left_paused"]
    assert "node2" in run.outcome["error"] and "not back" in run.outcome["error"]
    assert not run.touched("node3")


def test_a_stalled_repair_stops_the_run_before_the_next_node(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node1", "kind": "repair_stalls"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], repair_timeout_minutes=60)
    assert not run.outcome["succeeded"]
    assert "storage not healthy" in run.outcome["error"] and "Repair" in run.outcome["error"]
    assert run.node("node1")["result"] == "failed"
    assert not run.touched("node2") and not run.touched("node3")


def test_a_node_refusing_winrm_is_named_and_nothing_is_done_to_it(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node3", "kind": "winrm_refused"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"])
    assert not run.outcome["succeeded"]
    assert [run.node(n)["result"] for n in ("node1", "node2", "node3")] == ["upgraded", "upgraded", "failed"]
    assert "node3" in run.outcome["error"] and "not reachable" in run.outcome["error"]
    assert not run.touched("node3")


def test_a_node_paused_by_an_operator_blocks_the_run_and_stays_paused(run_upgrade):
    from hciupgrade.sim.scenario import parse_scenario

    data = make_scenario(nodes=3, time_factor=FAST).model_dump()
    data["cluster"]["nodes"][2]["state"] = "Paused"
    run = run_upgrade(parse_scenario(data), gate_timeout_minutes=2)
    assert not run.outcome["succeeded"]
    assert "node node3 is Paused" in run.outcome["error"]
    assert not any(e["kind"] in ("suspend", "resume") for e in run.events)
