"""The rolling upgrade, end to end: the Prefect flow drives a simulated cluster through the real pypsrp client and
the fake WinRM endpoints. Every run's event log is checked against DESIGN.md's invariants 1 to 4 (conftest)."""

from __future__ import annotations

import json

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


LIVE = {"workload_policy": "live-migrate"}  # the VMs stay running and move; the simulator lets mixed builds migrate
MIGRATES = {"mixed_version_migration": "works"}


def test_a_vm_that_will_not_migrate_stops_the_run_and_the_node_is_resumed(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node2", "kind": "drain_fails"}],
                             knobs=MIGRATES)
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], max_failed_nodes=0, **LIVE)
    assert not run.outcome["succeeded"] and run.state.is_failed()
    assert "node2" in run.outcome["error"] and "drain" in run.outcome["error"]
    assert run.node("node1")["result"] == "upgraded"
    failed = run.node("node2")
    assert failed["result"] == "failed" and not failed["left_paused"]
    assert any(e["kind"] == "resume" and e["node"] == "node2" for e in run.events)
    assert not run.touched("node3")


def test_a_failed_install_stops_the_run_and_the_node_keeps_its_build(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node1", "kind": "install_fails"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], max_failed_nodes=0)
    assert not run.outcome["succeeded"]
    assert "setup failed with exit code 0xc1900101" in run.outcome["error"]
    assert run.node("node1")["result"] == "failed"
    assert not any(e["kind"] == "build" for e in run.events)
    assert not any(e["kind"] == "restart" for e in run.events)  # never restarted onto a failed setup
    assert not run.touched("node2") and not run.touched("node3")
    # the run's header in Prefect's UI: one short line naming the node, the step and the cause
    message = run.state.message
    assert "node1" in message and "install" in message and "0xc1900101" in message, message
    assert len(message) < 300 and "\n" not in message and "PartiallyFailed" not in message


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
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], repair_timeout_minutes=60,
                      max_failed_nodes=0, max_retries_per_node=1)
    assert not run.outcome["succeeded"]
    assert run.outcome["error"].startswith("storage: storage not healthy") and "Repair" in run.outcome["error"]
    assert "Volume01" in run.outcome["error"]  # named by its volumes and jobs: a cluster condition, not a node's
    node1 = run.node("node1")  # its update completed: upgraded, with its storage not healthy
    assert node1["result"] == "upgraded" and node1["build_after"] == "10.0.25398.1486"
    assert node1["storage_healthy"] is False
    assert not run.touched("node2") and not run.touched("node3")


def test_a_node_refusing_winrm_is_named_and_nothing_is_done_to_it(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node3", "kind": "winrm_refused"}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], max_failed_nodes=0)
    assert not run.outcome["succeeded"]
    assert [run.node(n)["result"] for n in ("node1", "node2", "node3")] == ["upgraded", "upgraded", "not-started"]
    assert run.node("node3")["refused"]  # counts against MaxFailedNodes
    assert "node3" in run.outcome["error"] and "not reachable" in run.outcome["error"]
    assert not run.touched("node3")


def test_a_node_paused_by_an_operator_blocks_the_run_and_stays_paused(run_upgrade):
    from hciupgrade.sim.scenario import parse_scenario

    data = make_scenario(nodes=3, time_factor=FAST).model_dump()
    data["cluster"]["nodes"][2]["state"] = "Paused"
    run = run_upgrade(parse_scenario(data), gate_timeout_minutes=2)
    assert not run.outcome["succeeded"]
    assert "node3 paused by someone else (no hci-upgrade mark on it)" in run.outcome["error"]
    assert not any(e["kind"] in ("suspend", "resume") for e in run.events)


def test_a_node_is_retried_as_a_whole_up_to_max_retries_per_node(run_upgrade):
    scenario = make_scenario(nodes=2, time_factor=FAST, faults=[{"node": "node1", "kind": "install_fails", "times": 1}])
    run = run_upgrade(scenario, node_order=["node1", "node2"])
    assert run.outcome["succeeded"]
    assert run.node("node1")["attempts"] == 2 and run.node("node1")["result"] == "upgraded"
    assert sum(1 for e in run.events if e["kind"] == "suspend" and e["node"] == "node1") == 2


def test_within_max_failed_nodes_the_run_goes_on_but_does_not_succeed(run_upgrade):
    scenario = make_scenario(nodes=3, time_factor=FAST, faults=[{"node": "node1", "kind": "drain_fails"}],
                             knobs=MIGRATES)
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], max_failed_nodes=1, max_retries_per_node=2,
                      **LIVE)
    assert [run.node(n)["result"] for n in ("node1", "node2", "node3")] == ["failed", "upgraded", "upgraded"]
    assert run.node("node1")["attempts"] == 2
    assert not run.outcome["succeeded"] and run.outcome["error"].startswith("PartiallyFailed")


def test_more_failures_than_max_failed_nodes_stop_the_run(run_upgrade):
    faults = [{"node": "node1", "kind": "install_fails"}, {"node": "node2", "kind": "install_fails"}]
    run = run_upgrade(make_scenario(nodes=4, time_factor=FAST, faults=faults),
                      node_order=["node1", "node2", "node3", "node4"], max_failed_nodes=1, max_retries_per_node=1)
    assert run.outcome["error"].startswith("MaxFailedNodesExceeded")
    assert not run.touched("node3") and not run.touched("node4")


def test_a_failing_pre_update_script_means_the_node_is_not_updated(run_upgrade):
    scenario = make_scenario(nodes=2, time_factor=FAST, faults=[{"node": "node1", "kind": "pre_script_fails"}])
    run = run_upgrade(scenario, node_order=["node1", "node2"], pre_update_script="C:\\Scripts\\pre.ps1",
                      post_update_script="C:\\Scripts\\post.ps1", max_failed_nodes=0, max_retries_per_node=1)
    assert "pre-script" in run.outcome["error"]
    assert not any(e["kind"] in ("suspend", "install") for e in run.events if e["node"] == "node1")


def test_force_drain_when_the_operator_allows_it(run_upgrade):
    scenario = make_scenario(nodes=2, time_factor=FAST, faults=[{"node": "node1", "kind": "drain_fails"}])
    run = run_upgrade(scenario, node_order=["node1", "node2"], drain_timeout_policy="force-drain")
    assert run.outcome["succeeded"]
    assert any(e["kind"] == "vm_moved" and not e["live"] for e in run.events)


def test_a_cau_run_in_progress_blocks_before_anything_changes(run_upgrade):
    from hciupgrade.sim.scenario import parse_scenario

    data = make_scenario(nodes=2, time_factor=FAST).model_dump()
    data["knobs"] = {"cau_run_state": "RunInProgress"}
    run = run_upgrade(parse_scenario(data))
    assert "Get-CauRun: RunInProgress" in run.outcome["error"]
    assert not run.touched("node1") and not run.touched("node2")


def test_the_scan_warns_when_nodes_are_offered_different_feature_updates(tmp_path, monkeypatch):
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.cluster import SimCluster
    from hciupgrade.sim.scenario import parse_scenario
    from tests.test_properties import engine_for

    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    data = make_scenario(nodes=3, time_factor=FAST).model_dump()
    data["cluster"]["nodes"][1]["media_build"] = "10.0.25398.1369"
    sim = SimCluster(parse_scenario(data))
    outcome, pre = engine_for(sim, RunOptions(target_build="10.0.25398.1486"), None).run(dry_run=True)
    offered = {row.node: row.offered for row in pre.scan}
    assert offered == {"node1": "10.0.25398.1486", "node2": "10.0.25398.1369", "node3": "10.0.25398.1486"}
    finding = next(f for f in pre.findings if f.check == "same feature update offered to every node")
    assert not finding.ok and "10.0.25398.1369" in finding.detail
    media = next(f for f in pre.findings if f.check == "media reaches the target build")
    assert media.blocking and not outcome.succeeded
    assert [p.action for p in pre.plan] == ["upgrade"] * 3 and not any(e["kind"] == "suspend" for e in sim.events)


# --- WorkloadPolicy: what Microsoft's current pages recommend for the VMs (hciupgrade/targets.py) ---------------
def test_by_default_each_nodes_vms_are_shut_down_before_its_drain_and_started_after_its_resume(run_upgrade):
    run = run_upgrade(make_scenario(nodes=3, vms_per_node=2, time_factor=FAST),
                      node_order=["node1", "node2", "node3"])
    assert run.outcome["succeeded"]
    for node in ("node1", "node2", "node3"):
        mine = {f"vm-{node}-1", f"vm-{node}-2"}
        kinds = [(e["kind"], e.get("vm"), e.get("status")) for e in run.events
                 if e.get("node") == node or e.get("vm") in mine]
        suspend = next(i for i, k in enumerate(kinds) if k[0] == "suspend")
        resume = next(i for i, k in enumerate(kinds) if k[0] == "resume")
        off = {k[1] for k in kinds[:suspend] if k[0] == "vm" and k[2] == "Off"}
        on = {k[1] for k in kinds[resume:] if k[0] == "vm" and k[2] == "Running"}
        assert off == mine and on == mine, (node, kinds)
    # no VM was live-migrated: each moved only as a stopped role
    assert all(not e["live"] for e in run.events if e["kind"] == "vm_moved")
    phases = {json.loads(line)["phase"] for line in run.record.splitlines()}
    assert {"stop-vms", "start-vms"} <= phases


def test_live_migration_between_mixed_builds_fails_by_default_and_the_drain_names_the_vm(run_upgrade):
    """The simulator's harsher default (Knobs.mixed_version_migration): a running VM does not move between a 22H2
    node and an upgraded one, so live-migrate stops at the second node; the VM stays running on its node."""
    run = run_upgrade(make_scenario(nodes=3, vms_per_node=2, time_factor=FAST),
                      node_order=["node1", "node2", "node3"], max_failed_nodes=0, **LIVE)
    assert not run.outcome["succeeded"]
    assert run.node("node1")["result"] == "upgraded" and run.node("node2")["result"] == "failed"
    assert "drain" in run.outcome["error"]
    stuck = [e for e in run.events if e["kind"] == "drain" and e.get("status") == "Failed"]
    assert stuck and stuck[0]["node"] == "node2"
    assert not run.touched("node3")


def test_live_migrate_keeps_every_vm_running_where_mixed_builds_migrate(run_upgrade):
    run = run_upgrade(make_scenario(nodes=3, vms_per_node=2, time_factor=FAST, knobs=MIGRATES),
                      node_order=["node1", "node2", "node3"], **LIVE)
    assert run.outcome["succeeded"]
    assert not any(e["kind"] == "vm" and e.get("status") == "Off" for e in run.events)
    assert "stop-vms" not in {json.loads(line)["phase"] for line in run.record.splitlines()}
