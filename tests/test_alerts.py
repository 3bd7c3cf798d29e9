"""Alerts quiet during a cluster's run (inventory azure.quiet_alerts): an alert processing rule scoped to the
cluster's resource, created before the first node, removed at the end, and removed by the next run when a crash
left it. Served by the simulated ARM (hciupgrade/sim/arm.py)."""

from __future__ import annotations

import os
import secrets

from hciupgrade.sim.scenario import make_scenario

FAST = 5000


def run_with_alerts(tmp_path, quiet: bool, left_by_a_crash: bool = False):  # noqa: ANN201
    from flows.rolling_upgrade import rolling_upgrade
    from hciupgrade.azure.alerts import rule_path
    from hciupgrade.sim.arm import FakeArm
    from hciupgrade.sim.harness import SimHarness

    with FakeArm(token=secrets.token_urlsafe(16), time_factor=FAST) as arm, \
            SimHarness(make_scenario(nodes=2, vms_per_node=1, time_factor=FAST), azure=arm) as harness:
        inventory = harness.inventory()
        cluster = inventory.clusters[0]
        azure = cluster.azure.model_copy(update={"quiet_alerts": quiet})
        inventory = inventory.model_copy(update={"clusters": [cluster.model_copy(update={"azure": azure})]})
        path = tmp_path / "inventory.yaml"
        inventory.write(path)
        os.environ.update(harness.environment())
        rule = rule_path(azure, cluster.name)
        if left_by_a_crash:
            arm.action_rules[rule] = {"id": rule, "location": "Global", "properties": {}}
        state = rolling_upgrade(inventory=str(path), return_state=True)
        return state, arm, rule, harness.events()


def test_alerts_are_quiet_for_the_run_and_the_rule_is_gone_after_it(prefect_server, tmp_path):
    state, arm, rule, events = run_with_alerts(tmp_path, quiet=True)
    assert state.is_completed()
    assert [(m, r) for m, r, _ in arm.action_rule_log] == [("PUT", rule), ("DELETE", rule)]
    body = arm.action_rule_log[0][2]
    assert body["properties"]["actions"] == [{"actionType": "RemoveAllActionGroups"}]
    assert body["properties"]["scopes"][0].endswith("/providers/Microsoft.AzureStackHCI/clusters/hci-demo")
    assert body["properties"]["schedule"]["effectiveUntil"] > body["properties"]["schedule"]["effectiveFrom"]
    assert arm.action_rules == {}
    assert any(e["kind"] == "suspend" for e in events)


def test_a_rule_a_crash_left_is_removed_by_the_next_run(prefect_server, tmp_path):
    state, arm, rule, _ = run_with_alerts(tmp_path, quiet=True, left_by_a_crash=True)
    assert state.is_completed() and arm.action_rules == {}


def test_no_rule_is_made_when_the_switch_is_off_or_for_a_dry_run():
    from flows.rolling_upgrade import alerts_quiet
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.arm import FakeArm
    from hciupgrade.sim.harness import SimHarness

    with FakeArm(token=secrets.token_urlsafe(16), time_factor=FAST) as arm, \
            SimHarness(make_scenario(nodes=2, vms_per_node=1, time_factor=FAST), azure=arm) as harness:
        cluster = harness.inventory().clusters[0]
        assert cluster.azure.quiet_alerts is False  # the default
        with alerts_quiet(cluster, RunOptions(), "r1"):
            pass
        on = cluster.model_copy(update={"azure": cluster.azure.model_copy(update={"quiet_alerts": True})})
        with alerts_quiet(on, RunOptions(), "r2", enabled=False):  # a dry run changes nothing, in Azure neither
            pass
    assert arm.action_rule_log == []
