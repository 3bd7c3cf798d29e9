"""A failed flow run retried through Prefect's API (what the UI's Retry button does) continues where it failed:
finished nodes are not repeated."""

from __future__ import annotations

import os

from prefect import get_client
from prefect.flow_engine import run_flow
from prefect.states import Scheduled

from flows.rolling_upgrade import rolling_upgrade
from hciupgrade.models import RunOptions
from hciupgrade.records import new_run_id
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER, SimHarness
from hciupgrade.sim.scenario import make_scenario


def test_retrying_a_failed_flow_run_continues_where_it_failed(prefect_server, tmp_path):
    scenario = make_scenario(nodes=3, time_factor=5000,
                             faults=[{"node": "node2", "kind": "install_fails", "times": 1}])
    options = RunOptions(NodeOrder=["node1", "node2", "node3"], MaxRetriesPerNode=1, MaxFailedNodes=0,
                         poll_seconds=10, retry_delay_seconds=0.05, target_build=scenario.cluster.target_build)
    with SimHarness(scenario) as harness:
        inventory = tmp_path / "inventory.yaml"
        harness.inventory().write(inventory)
        os.environ.update(harness.environment())
        first = rolling_upgrade(inventory=str(inventory), options=options, run_id=new_run_id(), return_state=True)
        assert first.is_failed()
        flow_run_id = first.state_details.flow_run_id
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
            flow_run = client.read_flow_run(flow_run_id)
        second = run_flow(rolling_upgrade, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
        with get_client(sync_client=True) as client:
            retried = client.read_flow_run(flow_run_id)
        events = harness.events()
    assert second.is_completed() and retried.run_count == 2
    assert [e["node"] for e in events if e["kind"] == "suspend"] == ["node1", "node2", "node2", "node3"]
    outcome = second.result()
    assert [n["result"] for n in outcome["nodes"]] == ["skipped", "upgraded", "upgraded"]
    assert check_invariants(events, scenario, outcome, SIM_USER) == []
