"""What an operator sees: the run's story in Prefect's log, a run name that says which cluster, a window that
ends without failing, and messages that name what to act on."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from hciupgrade.records import load_events
from hciupgrade.records.narration import describe
from hciupgrade.sim.scenario import make_scenario
from tests.test_safety import cluster, engine

FAST = 5000


def flow_run_logs(state) -> list[str]:  # noqa: ANN001
    import logging
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    for handler in logging.getLogger("prefect.flow_runs").handlers:
        handler.flush()  # the API handler sends in batches
    time.sleep(1)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    return [flow_run.name] + [log.message for log in logs]


def test_the_run_tells_its_story_in_prefects_log_under_the_clusters_name(run_upgrade):
    run = run_upgrade(make_scenario(nodes=2, vms_per_node=2, time_factor=FAST), node_order=["node1", "node2"])
    assert run.outcome["succeeded"]
    name, *lines = flow_run_logs(run.state)
    assert name == "upgrade-hci-demo"  # resolved from the inventory: never "upgrade-None"
    text = "\n".join(lines)
    for expected in ("plan, in this order: node1 upgrade (fresh), node2 upgrade (fresh)",
                     "draining node1 (2 VMs)", "node1: installer exit code 0",
                     "resumed node1 (failback Immediate)", "node1: upgraded: 10.0.20349.2966 -> 10.0.25398.1486",
                     "preflight ok: no node paused by someone else"):
        assert expected in text, expected
    assert not any(line.startswith("node1: node1") for line in lines)


def test_a_window_that_ends_stops_cleanly_between_nodes_and_the_next_run_continues(run_upgrade):
    # a node takes over an hour; at x500 the run has 6 s to reach node1 (reads, the lock, the fence), room on a loaded
    # machine, and node1 ends after the window
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=500)
    first = run_upgrade(scenario, node_order=["node1", "node2", "node3"], StopAfter=timedelta(minutes=50))
    # Completed by name (the Runs tab's default filter lists known state names), the message and a tag say why
    assert first.state.is_completed() and first.state.name == "Completed"
    assert first.state.message.startswith("window ended: StopAfter")
    listed = runs_the_ui_lists(first.state.state_details.flow_run_id)
    assert listed and {"window-ended", "hci-upgrade", "cluster:hci-demo"} <= set(listed[0].tags)
    assert first.outcome["window_ended"] and "left for the next window: node2, node3" in first.outcome["error"]
    records = [json.loads(line) for line in first.record.splitlines()]
    assert records[-1]["phase"] == "run" and records[-1]["status"] == "stopped"
    assert [n["result"] for n in first.outcome["nodes"]] == ["upgraded", "not-started", "not-started"]
    # the summary says how it ended (not "FAILED"), and the table lists every node, attempts as whole numbers
    summary = artifact("upgrade-hci-demo-summary")
    assert summary.startswith("# Rolling upgrade of hci-demo: window ended") and "FAILED" not in summary
    rows = json.loads(artifact("upgrade-hci-demo-nodes"))
    assert [(r["node"], r["result"], r["attempts"]) for r in rows] == [
        ("node1", "upgraded", "1"), ("node2", "not-started", "0"), ("node3", "not-started", "0")]


def test_a_failed_drain_names_the_vms_that_would_not_move_and_where_they_are():
    sim = cluster(nodes=3, faults=[{"node": "node2", "kind": "drain_fails"}],
                  knobs={"mixed_version_migration": "works"})
    outcome, _ = engine(sim, node_order=["node1", "node2", "node3"], max_failed_nodes=0,
                        max_retries_per_node=1, workload_policy="live-migrate").run()
    node2 = next(n for n in outcome.nodes if n.node == "node2")
    assert "vm-node2-1 is Online on node2" in node2.error
    assert not node2.error.startswith("node2: node2")


def test_log_sentences_never_name_a_node_twice():
    level, line = describe({"node": "hci-n1", "phase": "node", "status": "failed", "attempts": 1,
                            "error": "hci-n1: drain: DrainStatus Failed"})
    assert line == "hci-n1: failed after 1 attempt(s): drain: DrainStatus Failed"
    assert describe({"node": "hci-n1", "phase": "note", "status": "info", "detail": "draining hci-n1 (3 VMs)"}) \
        == (20, "draining hci-n1 (3 VMs)")


@pytest.mark.parametrize("dry_run", [True])
def test_the_dry_run_plan_agrees_with_the_preflight(dry_run):
    sim = cluster(nodes=3, faults=[{"node": "node3", "kind": "winrm_refused"}])
    with sim.lock:
        sim.operator_pause("node2")
    _, pre = engine(sim).run(dry_run=dry_run)
    plan = {p.node: p for p in pre.plan}
    assert plan["node2"].action == "refuse" and "paused by someone else" in plan["node2"].detail
    assert plan["node3"].action == "refuse" and "not reachable" in plan["node3"].detail
    assert plan["node1"].action == "upgrade"
    assert load_events().empty is False


def test_status_skips_dry_runs_and_refused_runs_and_labels_them():
    from hciupgrade.records.reports import latest_run_id, run_report, run_status

    sim = cluster(nodes=2)
    real, _ = engine(sim).run()
    dry, _ = engine(sim).run(dry_run=True)
    with sim.lock:
        sim.operator_pause("node1")
    refused, _ = engine(sim).run()  # the preflight blocks: nothing touched
    assert latest_run_id(sim.name) == real.run_id
    assert run_report(dry.run_id)[0]["aside"] == "dry run" and run_report(refused.run_id)[0]["aside"] == "refused"
    status = run_status(sim.name)
    assert status.run_id == real.run_id and status.result == "succeeded" and status.label == ""


def test_the_run_graph_is_one_chain_of_named_task_runs_under_a_tagged_flow_run(run_upgrade):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=FAST, faults=[
        {"node": "node2", "kind": "install_fails", "times": 1}])
    run = run_upgrade(scenario, node_order=["node1", "node2"])
    assert run.outcome["succeeded"]
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[run.state.state_details.flow_run_id])))
    by_name = {t.name: t for t in task_runs}
    assert {"reconcile", "preflight", "plan", "drain-node1", "install-node2", "recover-node2",
            "install-node2-attempt-2"} <= set(by_name)
    ids = {t.id for t in task_runs}
    linked = [t for t in task_runs if any(getattr(i, "id", None) in ids for i in t.task_inputs.get("wait_for", []))]
    assert len(linked) == len(task_runs) - 1  # one chain: every task run but the first waits for another
    # the cluster's tag is the flow run's; a tagged task run would cost the server a slot request and a lease
    assert all(not t.tags for t in task_runs)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run.state.state_details.flow_run_id)
    assert "cluster:hci-demo" in flow_run.tags


def test_the_log_says_what_the_lock_and_a_takeover_mean_and_a_warning_is_a_warning():
    assert describe({"node": None, "cluster": "hci-demo", "phase": "lock", "status": "acquired", "fence": 7}) == \
        (20, "holding the lock of hci-demo (fence 7): every change proves it")
    assert describe({"node": "n2", "phase": "ownership", "status": "paused", "taken_over_from": "run-a",
                     "fence": 7, "mark": "run-b"}) == \
        (20, "n2: taken over from run run-a, which is dead: its mark is this run's now (fence 7)")
    assert describe({"node": None, "phase": "check", "status": "failed", "check": "second hop for Test-Cluster",
                     "detail": "access denied", "blocking": False}) == \
        (30, "check second hop for Test-Cluster: access denied")  # never "cluster: check failed: None" at ERROR


# the state names the UI's Runs tab asks for by default (Prefect UI's flow-runs filter, its known states)
UI_DEFAULT_STATES = ["Scheduled", "Late", "Resuming", "AwaitingRetry", "AwaitingConcurrencySlot", "Pending",
                     "Paused", "Suspended", "Running", "Retrying", "Completed", "Cached", "Cancelling", "Cancelled",
                     "Failed", "Crashed", "TimedOut"]


def runs_the_ui_lists(flow_run_id):  # noqa: ANN001, ANN201
    """The flow run as the Runs tab's query finds it: by id, with the UI's default state-name filter."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    query = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]),
                          state=FlowRunFilterState(name=FlowRunFilterStateName(any_=UI_DEFAULT_STATES)))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=query)


def artifact(key: str):  # noqa: ANN201
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created).data


def test_the_cumulative_update_is_a_run_and_artifacts_of_its_own(run_upgrade):
    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=FAST, build="10.0.25398.1486")
    run = run_upgrade(scenario, node_order=["node1", "node2"], update="cumulative",
                      target_build="10.0.25398.1913")
    assert run.outcome["succeeded"], run.outcome["error"]
    name, *_ = flow_run_logs(run.state)
    assert name == "cumulative-update-hci-demo"
    assert artifact("cumulative-update-hci-demo-summary").startswith("# Cumulative update of hci-demo: upgraded")


def test_the_approval_form_offers_only_the_pending_steps_each_off_and_saying_it_cannot_be_undone():
    from flows.finish import ApprovalInput

    form = ApprovalInput.for_steps(["functional-level", "storage-pool"])  # no VM below the target: not offered
    schema = form.model_json_schema()["properties"]
    assert set(schema) == {"approver", "reason", "functional_level", "storage_pool"}
    for toggle in ("functional_level", "storage_pool"):
        assert schema[toggle]["default"] is False and "Cannot be undone" in schema[toggle]["description"]
    assert form(approver="ana", reason="CHG-7", functional_level=True).approval().steps == ["functional-level"]
    assert form(approver="ana", reason="CHG-7").approval() is None  # a name and a reason approve nothing


def test_the_log_says_what_each_irreversible_step_changed():
    assert describe({"phase": "functional-level", "status": "succeeded", "before": 11, "after": 12}) == \
        (20, "cluster functional level raised: 11 -> 12")
    assert describe({"phase": "storage-pool", "status": "succeeded", "before": 27, "after": 29}) == \
        (20, "storage pool version updated: 27 -> 29")


def test_the_run_form_titles_the_options_as_cau_writes_them():
    """The deployment's Run form is Prefect's parameter schema of the flow: CAU's names, not 'Pathtosetupmedia'."""
    from prefect.utilities.callables import parameter_schema

    from flows.rolling_upgrade import rolling_upgrade

    schema = parameter_schema(rolling_upgrade.fn).model_dump()
    fields = schema["definitions"]["RunOptions"]["properties"]
    for name in ("PathToSetupMedia", "MaxFailedNodes", "StopAfter", "PreStage", "TargetRelease", "WorkloadPolicy"):
        assert fields[name]["title"] == name and fields[name].get("description"), name
    # every option the form shows says what it does; the engine's own settings and the CLI's are not offered
    assert not [name for name, field in fields.items() if not field.get("description")]
    assert not {"poll_seconds", "poll_max_seconds", "window_seconds", "task_retries", "restart_only"} & set(fields)
    assert set(schema["properties"]) == {"inventory", "cluster", "options"}  # no run_id, no dry_run


def test_a_deployment_may_still_set_an_internal_option_and_a_misspelt_one_is_refused_when_the_run_starts():
    from hciupgrade.models import RunOptions

    assert RunOptions.model_validate({"poll_seconds": 5, "StopAfter": "06:00:00"}).poll_seconds == 5
    with pytest.raises(ValueError, match="StopAftr"):
        RunOptions.model_validate({"StopAftr": "06:00:00"})
