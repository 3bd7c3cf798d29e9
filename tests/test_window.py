"""The maintenance window: PreStage (setup's first phase on every node at once, before the first drain), the
cumulative update in the same drain, the soak between nodes; with faults during staging. Every run's event log is
checked against DESIGN.md's invariants (the run_upgrade fixture)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hciupgrade.fleet import estimates
from hciupgrade.models import WavePolicy
from hciupgrade.psenums import NodeState
from hciupgrade.sim.scenario import make_scenario
from hciupgrade.upgrade.positions import Mode, NodeFacts, Position, decide
from tests.test_safety import cluster, engine

FAST = 5000
ORDER = ["node1", "node2", "node3"]


def phases(run) -> list[dict]:
    return [json.loads(line) for line in run.record.splitlines()]


def out_of_service_minutes(events: list[dict], node: str) -> float:
    """Cluster minutes from the node's pause to its resume."""
    start = next(e["t"] for e in events if e["kind"] == "suspend" and e["node"] == node)
    end = next(e["t"] for e in events if e["kind"] == "resume" and e["node"] == node)
    return (end - start) / 60


def setup_minutes_in_drain(events: list[dict], node: str) -> float:
    """Cluster minutes the node's setup ran between its pause and its resume (by the simulator's own clock)."""
    start = next(e["t"] for e in events if e["kind"] == "suspend" and e["node"] == node)
    end = next(e["t"] for e in events if e["kind"] == "resume" and e["node"] == node)
    ran = [e["t"] for e in events if e["kind"] == "install" and e["node"] == node and start <= e["t"] <= end]
    return (max(ran) - min(ran)) / 60 if ran else 0.0


def test_pre_stage_runs_setup_on_every_node_before_the_first_drain_and_shortens_each_nodes_absence(run_upgrade):
    # at x1000 a remote call's latency reads as a few cluster seconds, not minutes: the comparison is of the cluster
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=1000)
    staged = run_upgrade(scenario, node_order=ORDER, pre_stage=True)
    plain = run_upgrade(scenario, node_order=ORDER)
    assert staged.outcome["succeeded"] and plain.outcome["succeeded"]
    first_drain = next(i for i, e in enumerate(staged.events) if e["kind"] == "suspend")
    started = {e["node"] for e in staged.events[:first_drain] if e["kind"] == "install" and e["status"] == "Running"}
    done = {e["node"] for e in staged.events[:first_drain] if e["kind"] == "install" and e["status"] == "Completed"}
    assert started == done == set(ORDER)
    assert {e["node"] for e in phases(staged) if e["phase"] == "stage" and e["status"] == "succeeded"} == set(ORDER)
    # out of service: drain, restart into setup's offline phases, back, resume; no setup inside the drain. Each
    # node's absence shrinks by its setup (45 to 90 cluster minutes); half of that is the margin, since a loaded
    # machine's call latency (a second reads as 17 cluster minutes here) lands in either run's drain
    for node in ORDER:
        assert setup_minutes_in_drain(staged.events, node) == 0
        setup = setup_minutes_in_drain(plain.events, node)
        assert setup >= 45
        assert out_of_service_minutes(staged.events, node) < out_of_service_minutes(plain.events, node) - setup / 2


def test_setup_failing_while_staging_leaves_that_node_to_its_turn_where_setup_runs_again(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST,
                             faults=[{"node": "node2", "kind": "install_fails", "times": 1}])
    run = run_upgrade(scenario, node_order=ORDER, pre_stage=True)
    assert run.outcome["succeeded"], run.outcome["error"]
    assert [run.node(n)["result"] for n in ORDER] == ["upgraded"] * 3
    stage = {e["node"]: e["status"] for e in phases(run) if e["phase"] == "stage" and e["status"] != "running"}
    assert stage == {"node1": "succeeded", "node2": "failed", "node3": "succeeded"}
    node2 = [e for e in run.events if e["node"] == "node2" and e["kind"] in ("install", "suspend")]
    # the second setup on node2 starts after its drain; the others' ran before theirs only
    assert [(e["kind"], e.get("status")) for e in node2] == [
        ("install", "Running"), ("install", "Failed"), ("suspend", None), ("install", "Running"),
        ("install", "Completed")]


@pytest.mark.parametrize("after_minutes", [5, 0], ids=["after-the-run-saw-it-staged", "before-the-run-saw-it"])
def test_a_staged_node_that_restarts_on_its_own_is_reported_never_counted_as_upgraded(run_upgrade, after_minutes):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST, faults=[
        {"node": "node3", "kind": "restarts_after_staging", "after_minutes": after_minutes}])
    run = run_upgrade(scenario, node_order=ORDER, pre_stage=True)
    node3 = run.node("node3")
    assert node3["result"] == "skipped" and "restarted outside this run after its staging" in node3["error"]
    assert not any(e["kind"] == "suspend" and e["node"] == "node3" for e in run.events)
    assert any(e["kind"] == "restart" and e["node"] == "node3" and e["by"] == "system" for e in run.events)
    assert run.node("node1")["result"] == run.node("node2")["result"] == "upgraded"
    if after_minutes == 0:  # the staging poll lost the node: the run says so rather than "staging failed"
        assert "node3: lost while staging" in run.record


def test_the_cumulative_update_in_the_same_drain_takes_each_node_to_the_minimum_with_one_drain(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST)
    run = run_upgrade(scenario, node_order=ORDER, cumulative_in_drain=True)
    assert run.outcome["succeeded"], run.outcome["error"]
    assert {run.node(n)["build_after"] for n in ORDER} == {scenario.cluster.lcu_build}
    for node in ORDER:
        assert sum(1 for e in run.events if e["kind"] == "suspend" and e["node"] == node) == 1
        assert sum(1 for e in run.events if e["kind"] == "restart" and e["node"] == node) == 2
        kinds = [e.get("update") for e in run.events if e["kind"] == "install" and e["node"] == node
                 and e["status"] == "Running"]
        assert kinds == ["feature", "cumulative"]


def test_node_soak_minutes_keeps_the_next_node_in_service_after_the_last_one_is_healthy(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST)
    run = run_upgrade(scenario, node_order=ORDER, node_soak_minutes=45)
    assert run.outcome["succeeded"]
    for before, after in zip(ORDER, ORDER[1:], strict=False):
        resumed = next(e["t"] for e in run.events if e["kind"] == "resume" and e["node"] == before)
        drained = next(e["t"] for e in run.events if e["kind"] == "suspend" and e["node"] == after)
        assert (drained - resumed) / 60 >= 45
    assert [e["node"] for e in phases(run) if e["phase"] == "soak" and e["status"] == "succeeded"] == ORDER[1:]


def test_a_rolling_restart_refuses_a_staged_node_and_an_upgrade_continues_it():
    """A restart would run setup's offline phases: a staged node is not restarted by a rolling restart."""
    facts = NodeFacts("n1", NodeState.Up, True, on_target=False, recorded_ours=False, marked_ours=False, staged=True)
    position, decision = decide(Mode.RESTART, facts)
    assert position == Position.STAGED and decision.action == "refuse" and "staged" in decision.why
    assert decide(Mode.UPGRADE, facts)[1].action == "run"
    not_asked = NodeFacts("n1", NodeState.Up, True, on_target=True, recorded_ours=False, marked_ours=False,
                          staged=True)
    assert decide(Mode.RESTART, not_asked)[1].action == "skip"


def test_window_fit_learns_from_staged_runs_and_the_plan_says_which_nodes_fit():
    rows = [{"cluster": "c1", "run_id": run, "node": f"n{i}", "start": f"2026-11-0{day}T22:00:00",
             "cluster_s": seconds, "staged": staged, "stage_s": 5400.0 if staged else None}
            for run, day, seconds, staged in (("r1", 1, 9000.0, False), ("r2", 8, 3600.0, True)) for i in range(3)]
    history = pd.DataFrame(rows)
    plain = estimates(["c1"], WavePolicy(), history)["c1"]
    staged = estimates(["c1"], WavePolicy(), history, staged=True)["c1"]
    assert plain.median_s > 3600 and plain.staging_s == 0
    assert (staged.median_s, staged.staging_s) == (3600.0, 5400.0)  # out of service apart from the staging
    sim = cluster(nodes=3)
    _, pre = engine(sim, node_order=ORDER, pre_stage=True, window_seconds=4 * 3600, node_estimate_seconds=3600,
                    stage_estimate_seconds=5400, window_margin_seconds=0).run(dry_run=True)
    details = [p.detail for p in pre.plan]
    assert "fits the window (done by about 150 min)" in details[0]
    assert "fits the window (done by about 210 min)" in details[1]
    assert "after the window's end" in details[2]
