"""Finishing the procedure on the simulated cluster: the cumulative update rolled through the same engine and
gates, then the post-OS steps with the irreversible ones behind a recorded approval, until the environment
checker finds nothing Critical. The engine runs through in-process sessions (the wire's shapes, no HTTP)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from hciupgrade.models import Approval, RunOptions
from hciupgrade.psenums import ReadinessSeverity
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.readiness import validation
from hciupgrade.sim.scenario import make_scenario
from hciupgrade.upgrade.postos import PostUpgrade, levels_table, validation_summary
from tests.conftest import record_text
from tests.test_safety import engine

FACTOR = 20000
AFTER_FEATURE_UPDATE = "10.0.25398.1486"


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))


def upgraded_cluster(nodes: int = 3, build: str = AFTER_FEATURE_UPDATE, knobs: dict | None = None,
                     **kw: Any) -> SimCluster:
    # set up for the second hop (CredSSP), so Test-Cluster reaches every node; the default refuses it
    scenario = make_scenario(nodes=nodes, vms_per_node=1, time_factor=FACTOR, build=build,
                             knobs={"second_hop": "allowed", **(knobs or {})}, **kw)
    return SimCluster(scenario)


def post_upgrade(sim: SimCluster, approval: Approval | None, **options: Any) -> tuple[PostUpgrade, Any]:
    run = engine(sim)
    asked: list[tuple[list[str], str]] = []

    def approve(steps: list[str], plan: str) -> Approval | None:
        asked.append((steps, plan))
        return approval

    recorder = RunRecorder(new_run_id(), sim.name, time_factor=FACTOR)
    run.client.own(recorder.run_id, partial(recorder.store.next_fence, sim.name))  # as the flow does, under the lock
    post = PostUpgrade(run.client, RunOptions(**options), recorder, approve)
    post.asked = asked  # type: ignore[attr-defined]
    return post, post.run()


def critical_failures(sim: SimCluster) -> list[str]:
    failures = []
    for node in sim.nodes:
        for record in validation(sim, node):
            if record["Severity"] == ReadinessSeverity.CRITICAL and record["Status"] != 0:
                failures.append(f"{node}: {record['Name']}")
    return sorted(set(failures))


# --- the cumulative update --------------------------------------------------------------------------------------
def test_every_node_gets_the_same_cumulative_update_one_at_a_time():
    data_sim = upgraded_cluster()
    outcome, _ = engine(data_sim, update="cumulative").run()
    assert outcome.succeeded
    assert {n.build for n in data_sim.nodes.values()} == {data_sim.lcu_build}
    assert [n.result for n in outcome.nodes] == ["upgraded"] * 3
    assert sum(1 for e in data_sim.events if e["kind"] == "suspend") == 3
    restarts = [e for e in data_sim.events if e["kind"] == "restart"]
    assert all(e["staged_kind"] == "cumulative" for e in restarts)
    assert check_invariants(data_sim.events, data_sim.scenario, outcome.model_dump(mode="json"), SIM_USER) == []


def test_a_node_already_on_the_cumulative_update_is_skipped():
    sim = upgraded_cluster()
    sim.nodes["node2"].build = sim.lcu_build
    outcome, _ = engine(sim, update="cumulative").run()
    assert outcome.succeeded and next(n for n in outcome.nodes if n.node == "node2").result == "skipped"
    assert not any(e["node"] == "node2" and e["kind"] in ("suspend", "restart") for e in sim.events)


def test_a_failing_cumulative_update_keeps_the_build_and_brings_the_node_back():
    sim = upgraded_cluster(faults=[{"node": "node1", "kind": "lcu_fails"}])
    outcome, _ = engine(sim, update="cumulative", node_order=["node1", "node2", "node3"], max_failed_nodes=0,
                        max_retries_per_node=1).run()
    node1 = next(n for n in outcome.nodes if n.node == "node1")
    assert node1.result == "failed" and "wusa.exe failed with exit code 0x80070643" in node1.error
    assert sim.nodes["node1"].build == AFTER_FEATURE_UPDATE and sim.nodes["node1"].state.name == "Up"
    assert not any(e["kind"] == "restart" for e in sim.events)  # never restarted onto a failed install
    assert check_invariants(sim.events, sim.scenario, outcome.model_dump(mode="json"), SIM_USER) == []


# --- the post-OS steps ------------------------------------------------------------------------------------------
def test_without_an_approval_nothing_irreversible_happens_and_the_run_says_what_waits():
    sim = upgraded_cluster(build="10.0.25398.1913")
    post, outcome = post_upgrade(sim, None)
    assert not outcome.succeeded and outcome.awaiting_approval == ["functional-level", "storage-pool"]
    assert sim.functional_level == 11 and sim.pool_version == 27
    assert not any(e["kind"] in ("functional_level", "pool_version") for e in sim.events)
    steps, plan = post.asked[0]
    assert "-WhatIf: it would succeed" in plan and "Update-StoragePool 'S2D on hci-demo'" in plan
    events = record_text(post.recorder.run_id)
    assert '"phase": "approval", "status": "failed"' in events and '"phase": "whatif"' in events


def test_an_approved_run_raises_the_levels_records_the_approval_and_leaves_nothing_critical():
    sim = upgraded_cluster(build="10.0.25398.1913")
    approval = Approval(approver="alice", reason="CHG-1234", source="cli")
    post, outcome = post_upgrade(sim, approval)
    assert outcome.succeeded, outcome.error
    assert sim.functional_level == 12 and sim.pool_version >= 28
    assert outcome.before.functional_level == 11 and outcome.after.functional_level == 12
    record = record_text(post.recorder.run_id)
    assert '"approver": "alice"' in record and '"reason": "CHG-1234"' in record
    summary = validation_summary(outcome.validation)
    assert set(summary["Category"]) >= {"Network", "Storage Spaces Direct"} and summary["Failed"].sum() == 0
    table = levels_table(outcome.before, outcome.after)
    assert table.iloc[0].tolist() == ["cluster functional level", "11", "12"]
    assert critical_failures(sim) == []


def test_only_the_approved_steps_run():
    sim = upgraded_cluster(build="10.0.25398.1913")
    approval = Approval(approver="alice", reason="CHG-1", steps=["functional-level"])
    _, outcome = post_upgrade(sim, approval)
    assert sim.functional_level == 12 and sim.pool_version == 27
    assert outcome.awaiting_approval == ["storage-pool"] and not outcome.succeeded


def test_a_refused_pool_update_fails_the_run_naming_it():
    sim = upgraded_cluster(build="10.0.25398.1913", faults=[{"node": "node1", "kind": "pool_update_refused"}])
    _, outcome = post_upgrade(sim, Approval(approver="a", reason="r"))
    assert not outcome.succeeded and "Update-StoragePool 'S2D on hci-demo' failed" in outcome.error
    assert sim.pool_version == 27 and sim.functional_level == 12  # the documented order: the level first


def test_the_post_os_steps_refuse_a_cluster_without_the_cumulative_update():
    sim = upgraded_cluster()  # 25398.1486: the feature update only
    _, outcome = post_upgrade(sim, Approval(approver="a", reason="r"))
    assert not outcome.succeeded and "below 10.0.25398.1904" in outcome.error
    assert sim.functional_level == 11


def test_vm_versions_one_at_a_time_and_a_vm_that_will_not_shut_down_is_left_running():
    sim = upgraded_cluster(build="10.0.25398.1913", faults=[{"node": "node2", "kind": "vm_shutdown_fails"}])
    names = sorted(sim.vms)
    _, outcome = post_upgrade(sim, Approval(approver="a", reason="r"), VmVersionUpdate=names)
    results = {v.vm: v for v in outcome.vms}
    assert results[names[0]].result == "updated" and results[names[0]].after == "12.0"
    assert results[names[1]].result == "failed" and "failed to shut down" in results[names[1]].error
    assert names[2] not in results and sim.vms[names[2]].version == "10.0"  # not touched after a failure
    assert all(vm.running for vm in sim.vms.values())
    assert not outcome.succeeded and names[1] in outcome.error


def test_storage_replica_asks_for_a_rolling_restart_of_every_node():
    sim = upgraded_cluster(build="10.0.25398.1913", knobs={"storage_replica": True})
    run = engine(sim)
    restarted: list[list[str]] = []
    post = PostUpgrade(run.client, RunOptions(), RunRecorder(new_run_id(), sim.name, time_factor=FACTOR),
                       lambda steps, plan: None, restart=lambda nodes: restarted.append(nodes) or True)
    post.run()
    assert restarted == [["node1", "node2", "node3"]]


@pytest.mark.parametrize("node_fact,check", [
    ({"remote_shutdown_rule": False}, "Remote Shutdown firewall rules enabled"),
    ({"reboot_pending": True}, "no restart pending"),
    ({"auto_update": "install"}, "automatic updates do not install on their own"),
])
def test_prerequisites_block_before_the_first_drain_with_their_fix(node_fact, check):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FACTOR)
    data = scenario.model_dump()
    data["cluster"]["nodes"][1].update(node_fact)
    from hciupgrade.sim.scenario import parse_scenario

    sim = SimCluster(parse_scenario(data))
    outcome, pre = engine(sim).run()
    finding = next(f for f in pre.findings if f.check == check)
    assert not finding.ok and "node2" in finding.detail and not outcome.succeeded
    assert not any(e["kind"] == "suspend" for e in sim.events)


def test_the_update_package_must_be_the_same_file_on_every_node():
    from hciupgrade.sim.scenario import parse_scenario

    data = make_scenario(nodes=3, vms_per_node=1, time_factor=FACTOR, build=AFTER_FEATURE_UPDATE).model_dump()
    data["cluster"]["nodes"][2]["package_missing"] = True
    sim = SimCluster(parse_scenario(data))
    outcome, pre = engine(sim, update="cumulative").run()
    finding = next(f for f in pre.findings if f.check == "the same update package on every node")
    assert not finding.ok and "missing on node3" in finding.detail
    assert not any(e["kind"] == "suspend" for e in sim.events)
