"""Runs nobody watches (issue 23, point 3): a step past the spread rule is told as stalled (the record, `status`,
the flow run's state message, a Prefect event), and RetryStalledOrFailedRunOnce runs the engine once more after
its cool-down when the failure is of a retryable kind (a node slow to come back), never after a refusal (a step
the cluster refused, a node paused by someone else)."""

from __future__ import annotations

import json

from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.scenario import make_scenario

FAST = 5000
UPGRADED = "10.0.25398.1486"


def runs_of(record: str) -> list[str]:
    return sorted({json.loads(line)["run_id"] for line in record.splitlines()})


def slow_node2(late_minutes: float = 300, **extra):
    # node2's feature-update restart takes five hours more than node1's: far past the 30-minute budget given below,
    # so that it is still away when the run gives up on it, however loaded the machine (at x5000 an hour is 0.7 s
    # of wall time: a loaded CI machine once spent that between the timeout and the recovery's look)
    return make_scenario(nodes=3, vms_per_node=1, time_factor=FAST,
                         faults=[{"node": "node2", "kind": "slow_return", "late_minutes": late_minutes}], **extra)


def test_a_node_slow_to_come_back_is_retried_once_after_the_cool_down_and_the_run_finishes(run_upgrade):
    run = run_upgrade(slow_node2(), check=False, node_order=["node1", "node2", "node3"],
                      FeatureUpdateRebootTimeoutMinutes=30, RetryStalledOrFailedRunOnce=True,
                      RetryCooldownMinutes=360)  # node2 is back 340 min after its restart
    final = run.state.result()
    assert run.state.is_completed() and final["succeeded"], final["error"]
    # the first run stopped at node2 (left down: no other node may go out); the retry adopted it, then did node3
    assert {n["node"]: n["result"] for n in final["nodes"]} == {"node1": "skipped", "node2": "upgraded",
                                                                  "node3": "upgraded"}
    # the first run failed node2 as retryable, and the retry is a run of its own that adopted it
    first = run.outcome
    failed = next(n for n in first["nodes"] if n["node"] == "node2")
    assert not first["succeeded"] and failed["result"] == "failed" and failed["retryable"]
    assert "not back 30 min after its restart" in failed["error"]
    assert final["run_id"] != first["run_id"]
    assert check_invariants(run.events, run.scenario, final, SIM_USER) == []
    assert sum(1 for e in run.events if e["kind"] == "restart" and e["node"] == "node2") == 1  # never twice


def test_without_the_option_the_same_failure_ends_the_run_failed(run_upgrade):
    run = run_upgrade(slow_node2(), check=False, node_order=["node1", "node2", "node3"],
                      FeatureUpdateRebootTimeoutMinutes=30)
    assert run.state.is_failed() and len(runs_of(run.record)) == 1
    assert next(n for n in run.outcome["nodes"] if n["node"] == "node2")["retryable"]


def test_a_step_the_cluster_refused_is_never_retried(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST,
                             faults=[{"node": "node2", "kind": "install_fails", "times": 1}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], MaxRetriesPerNode=1,
                      RetryStalledOrFailedRunOnce=True, RetryCooldownMinutes=1)
    assert run.state.is_failed()
    node2 = next(n for n in run.outcome["nodes"] if n["node"] == "node2")
    assert node2["result"] == "failed" and not node2["retryable"]
    # no second run: the fault would have let one through (times: 1), so the option did not retry
    assert sum(1 for e in run.events if e["kind"] == "install" and e["node"] == "node2"
               and e.get("status") == "Running") == 1


def test_a_node_paused_by_someone_else_is_never_retried(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST)
    nodes = [n.model_copy(update={"state": "Paused"}) if n.name == "node2" else n for n in scenario.cluster.nodes]
    scenario = scenario.model_copy(update={"cluster": scenario.cluster.model_copy(update={"nodes": nodes})})
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], RetryStalledOrFailedRunOnce=True,
                      RetryCooldownMinutes=1)
    assert not run.state.is_completed()
    assert not any(e["node"] == "node2" and e["kind"] in ("restart", "install", "resume") for e in run.events)
    assert len(runs_of(run.record)) == 1 and run.state.result(raise_on_failure=False)["run_id"] == \
        run.outcome["run_id"]


def test_a_wait_past_the_spread_rule_is_told_as_stalled_in_the_record_the_log_and_prefect(run_upgrade):
    from prefect.client.orchestration import get_client

    # node2's restart takes an hour more than node1's (10 min): past 1.5 times, inside its 120-minute budget
    run = run_upgrade(slow_node2(late_minutes=60), node_order=["node1", "node2", "node3"])
    assert run.state.is_completed()
    stalled = [json.loads(line) for line in run.record.splitlines() if '"stalled"' in line]
    assert [(e["node"], e["step"]) for e in stalled] == [("node2", "wait-back")], stalled
    # past max(1.5 x, +15 min) of what node1's wait for its return took (under 10 min): more than 15 min
    assert stalled[0]["minutes"] > 15 and "min it took on an earlier node" in stalled[0]["why"]
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(run.state.state_details.flow_run_id)
    running = [s for s in sorted(states, key=lambda s: s.timestamp) if s.type.value == "RUNNING"]
    told = next(i for i, s in enumerate(running) if (s.message or "").startswith("node2: wait-back stalled"))
    assert not running[-1].message and told < len(running) - 1  # cleared once node2 was back
    # `status` while it ran: the record up to the notice, read as `status` reads a run in progress
    from hciupgrade.records import load_events
    from hciupgrade.records.reports import stalled_step

    events = load_events(run_ids=[run.outcome["run_id"]])
    upto = events.iloc[: int((events["phase"] == "stalled").to_numpy().nonzero()[0][0]) + 1]
    said = stalled_step(upto, "node2")
    assert said and said.startswith("node2: wait-back running for") and "earlier node" in said


def test_a_repair_that_does_not_move_is_told_as_stalled_before_its_timeout_stops_the_run(run_upgrade):
    # node1's resync stops at 40%: no earlier node to compare with, the repair's own progress tells
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST,
                             faults=[{"node": "node1", "kind": "repair_stalls", "at_percent": 40}])
    run = run_upgrade(scenario, node_order=["node1", "node2", "node3"], WaitForStorageRepairTimeoutMinutes=60)
    assert run.state.is_failed() and "storage not healthy after 60 min" in run.outcome["error"]
    stalled = [json.loads(line) for line in run.record.splitlines() if '"stalled"' in line]
    assert [(e["node"], e["step"]) for e in stalled] == [("node1", "wait-storage")], stalled
    assert stalled[0]["why"].startswith("no repair progress for") and "40%" in stalled[0]["why"]
