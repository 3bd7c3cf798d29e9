"""The finishing flows end to end, through the real pypsrp client and the fake WinRM endpoints: `hci-upgrade finish`
with and without its approval flag, and the post-upgrade flow paused on a Prefect server for a typed approval,
approved through Prefect's API, or left to time out with nothing irreversible done."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hciupgrade.models import RunOptions
from hciupgrade.records.reports import run_status
from hciupgrade.sim.scenario import make_scenario
from tests.conftest import CLI, quick, serve_cluster

FAST = 5000
AFTER_FEATURE_UPDATE = "10.0.25398.1486"


def finished_scenario(build: str = AFTER_FEATURE_UPDATE):
    return make_scenario(nodes=3, vms_per_node=1, time_factor=FAST, build=build,
                         knobs={"second_hop": "allowed"})  # CredSSP set up: Test-Cluster reaches every node


def events_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finish_waits_for_its_approval_then_raises_the_levels_with_it(tmp_path):
    extra = {"PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    with serve_cluster(finished_scenario(), tmp_path, extra) as (inventory, env, events):
        waiting = subprocess.run([*CLI, "finish", "--inventory", str(inventory)], capture_output=True, text=True,
                                 env=env, timeout=600)
        no_reason = subprocess.run([*CLI, "finish", "--inventory", str(inventory), "--approve"],
                                   capture_output=True, text=True, env=env, timeout=120)
        approved = subprocess.run([*CLI, "finish", "--inventory", str(inventory), "--approve", "--reason",
                                   "CHG-42", "--json"], capture_output=True, text=True, env=env, timeout=600)
        log = events_of(events)
    assert waiting.returncode == 3, waiting.stdout[-3000:] + waiting.stderr[-3000:]
    assert "Awaiting approval: functional-level, storage-pool" in waiting.stdout
    lcu = [e for e in log if e["kind"] == "build"]
    assert sorted(e["node"] for e in lcu) == ["node1", "node2", "node3"] and {e["new"] for e in lcu} == \
        {"10.0.25398.1913"}
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    assert approved.returncode == 0, approved.stdout[-3000:] + approved.stderr[-3000:]
    post = json.loads(approved.stdout)["post_upgrade"]
    assert post["approval"]["approver"] == getpass.getuser() and post["approval"]["reason"] == "CHG-42"
    assert post["after"]["functional_level"] == 12 and post["after"]["pool_version"] >= 28
    assert [e["kind"] for e in log if e["kind"] in ("functional_level", "pool_version")] == \
        ["functional_level", "pool_version"]
    assert sum(1 for e in log if e["kind"] == "build") == 3  # the second run found every node done


@pytest.fixture
def served(prefect_server, tmp_path):
    """A simulated cluster served in this process; the flows talk to the test's Prefect server."""
    from hciupgrade.sim.harness import SimHarness

    with SimHarness(finished_scenario(build="10.0.25398.1913")) as h:
        inventory = tmp_path / "inv.yaml"
        h.inventory().write(inventory)
        os.environ.update(h.environment())
        yield h, inventory



def resume_when_paused(answer: dict, found: list, cluster: str | None = None,
                       schemas: list | None = None) -> threading.Thread:
    """Wait for the post-upgrade flow run to pause, then resume it with `answer` through Prefect's API; the form's
    schema, as the UI reads it, goes to `schemas`."""
    schemas = [] if schemas is None else schemas
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    def run() -> None:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                if runs:
                    found.append(runs[0])
                    keys = runs[0].state.state_details.run_input_keyset or {}
                    schemas.append(json.loads(client.read_flow_run_input(runs[0].id, keys["schema"])))
                    if cluster:
                        found.append(run_status(cluster))  # what `status` says meanwhile
                    if runs[0].parent_task_run_id:  # what its parent run shows meanwhile: message, artifacts
                        parent = client.read_flow_run(client.read_task_run(runs[0].parent_task_run_id).flow_run_id)
                        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                            flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id])))
                        found.append((parent, [a.data for a in artifacts]))
                    resume_flow_run(runs[0].id, run_input=answer)
                    return
                time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_on_a_server_the_flow_pauses_for_a_typed_approval_and_runs_only_what_was_approved(served):
    from flows.finish import post_upgrade

    harness, inventory = served
    found: list = []
    schemas: list = []
    answer = {"approver": "alice", "reason": "CHG-7", "functional_level": True, "storage_pool": False}
    thread = resume_when_paused(answer, found, harness.sim.name, schemas)
    state = post_upgrade(inventory=str(inventory), options=RunOptions(), wait_for_approval=True, return_state=True)
    thread.join(timeout=5)
    assert found, "the flow run never paused"
    paused, status = found
    assert status.awaiting == str(paused.id)  # `status`: awaiting approval, with the run's page
    # the form as the UI reads it from the paused run: a toggle per pending step, each off, saying it is final
    toggles = {k: v for k, v in schemas[0]["properties"].items() if k not in ("approver", "reason")}
    assert set(toggles) == {"functional_level", "storage_pool"}  # no VM below the target: not offered
    assert all(v["default"] is False and "Cannot be undone" in v["description"] for v in toggles.values())
    result = state.result(raise_on_failure=False)
    assert result["approval"] == {"approver": "alice", "reason": "CHG-7", "steps": ["functional-level"],
                                  "source": "prefect-ui"}
    assert harness.sim.functional_level == 12 and harness.sim.pool_version == 27
    assert result["awaiting_approval"] == ["storage-pool"]
    # not all it was asked: the run says so where the dashboard counts (Failed, with what waits)
    assert state.is_failed() and state.message == "awaiting approval: storage-pool"
    # the run graph: each post-OS step a task run, in order; the step not approved has none
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    ran = [t.name for t in sorted(tasks, key=lambda t: t.start_time or t.expected_start_time)]
    assert ran == ["verify", "what-if", "functional-level", "test-cluster", "report"], ran


def test_finish_from_the_cli_on_a_server_pauses_for_the_ui_form_and_names_its_page(served):
    """With PREFECT_API_URL set, `finish` without --approve waits for the UI's form (it does not exit 3 pointing
    at a UI where nothing waits), names the run's page, and goes on with what was approved there."""
    from prefect.settings import PREFECT_API_URL

    harness, inventory = served
    found: list = []
    thread = resume_when_paused({"approver": "dana", "reason": "CHG-8", "functional_level": True,
                                 "storage_pool": True}, found)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "COLUMNS": "200"}
    done = subprocess.run([*CLI, "finish", "--inventory", str(inventory), "--json"], capture_output=True, text=True,
                          env=env, timeout=600)
    thread.join(timeout=5)
    assert found, "the CLI's run never paused"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"/runs/flow-run/{found[0].id}" in done.stderr and "approve in the Prefect UI" in done.stderr
    parent, artifacts = found[1]  # the finish run, one level up, said what waits below it and linked to it
    assert parent.name.startswith("finish-") and parent.state.message.startswith("awaiting approval in post-upgrade-")
    assert any(f"/runs/flow-run/{found[0].id}" in str(a) for a in artifacts)
    post = json.loads(done.stdout)["post_upgrade"]
    assert post["approval"] == {"approver": "dana", "reason": "CHG-8", "steps": ["functional-level", "storage-pool"],
                                "source": "prefect-ui"}
    assert harness.sim.functional_level == 12 and harness.sim.pool_version >= 28


def test_offline_from_the_cli_on_a_server_waits_for_the_ui_form_then_takes_the_cluster_down(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from hciupgrade.sim.harness import SimHarness

    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=FAST, knobs={"second_hop": "allowed"})
    with SimHarness(quick(scenario)) as harness:
        inventory = tmp_path / "inv.yaml"
        harness.inventory().write(inventory)
        found: list = []
        thread = resume_when_paused({"approver": "eve", "reason": "CHG-10", "take_the_cluster_down": True}, found)
        env = {**os.environ, **harness.environment(), "PREFECT_API_URL": str(PREFECT_API_URL.value()),
               "COLUMNS": "200"}
        done = subprocess.run([*CLI, "offline", "--inventory", str(inventory), "--json"], capture_output=True,
                              text=True, env=env, timeout=600)
        thread.join(timeout=5)
        log = harness.events()
    assert found, "the offline run never paused for its approval"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"/runs/flow-run/{found[0].id}" in done.stderr
    assert set(json.loads(done.stdout)["builds_after"].values()) == {"10.0.25398.1913"}
    assert [e["status"] for e in log if e["kind"] == "cluster"] == ["Stopped", "Started"]


def test_an_approval_that_times_out_leaves_nothing_irreversible_done(served):
    from flows.finish import post_upgrade

    harness, inventory = served
    state = post_upgrade(inventory=str(inventory), options=RunOptions(ApprovalTimeoutMinutes=0.05),
                         wait_for_approval=True, return_state=True)
    assert state.is_failed()
    assert harness.sim.functional_level == 11 and harness.sim.pool_version == 27
    assert not any(e["kind"] in ("functional_level", "pool_version") for e in harness.events())


def test_the_offline_command_needs_its_approval_and_then_updates_every_node_at_once(tmp_path):
    extra = {"PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST, knobs={"second_hop": "allowed"})
    with serve_cluster(scenario, tmp_path, extra) as (inventory, env, events):
        refused = subprocess.run([*CLI, "offline", "--inventory", str(inventory)], capture_output=True, text=True,
                                 env=env, timeout=120)
        done = subprocess.run([*CLI, "offline", "--inventory", str(inventory), "--approve", "--reason", "CHG-9",
                               "--json"], capture_output=True, text=True, env=env, timeout=600)
        log = events_of(events)
    assert refused.returncode == 2 and "--approve --reason" in refused.stderr
    assert not any(e["kind"] == "cluster" for e in log[:5])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result["builds_after"].values()) == {"10.0.25398.1913"}
    assert [e["status"] for e in log if e["kind"] == "cluster"] == ["Stopped", "Started"]


def test_an_approver_who_ticks_nothing_refuses_and_nothing_irreversible_happens(served):
    from flows.finish import post_upgrade

    harness, inventory = served
    found: list = []
    thread = resume_when_paused({"approver": "bob", "reason": "not tonight", "functional_level": False,
                                 "storage_pool": False}, found)
    state = post_upgrade(inventory=str(inventory), options=RunOptions(), wait_for_approval=True, return_state=True)
    thread.join(timeout=5)
    result = state.result(raise_on_failure=False)
    assert found and result["approval"] is None
    assert state.is_failed() and state.message == "awaiting approval: functional-level, storage-pool"
    assert result["awaiting_approval"] == ["functional-level", "storage-pool"]
    assert harness.sim.functional_level == 11 and harness.sim.pool_version == 27


def test_the_whole_path_as_one_parent_flow_resumes_where_it_stopped(prefect_server, tmp_path):
    from flows.finish import full_upgrade
    from hciupgrade.models import Approval
    from hciupgrade.sim.harness import SimHarness

    with SimHarness(make_scenario(nodes=2, vms_per_node=1, time_factor=FAST,
                                  knobs={"second_hop": "allowed"})) as harness:
        inventory = tmp_path / "inv.yaml"
        harness.inventory().write(inventory)
        os.environ.update(harness.environment())
        options = RunOptions(poll_seconds=10, retry_delay_seconds=0.05)
        stopped = full_upgrade(inventory=str(inventory), options=options, wait_for_approval=False, return_state=True)
        assert stopped.is_failed() and stopped.message == "awaiting approval: functional-level, storage-pool"
        waiting = stopped.result(raise_on_failure=False)
        assert waiting["post_upgrade"]["awaiting_approval"] == ["functional-level", "storage-pool"]
        assert {n.build for n in harness.sim.nodes.values()} == {"10.0.25398.1913"}
        restarts = sum(1 for e in harness.events() if e["kind"] == "restart")
        done = full_upgrade(inventory=str(inventory), options=options,
                            approval=Approval(approver="carol", reason="CHG-77"))
        assert done["post_upgrade"]["succeeded"]
        assert sum(1 for e in harness.events() if e["kind"] == "restart") == restarts  # nothing done twice
        assert [n["result"] for n in done["feature_update"]["nodes"]] == ["skipped", "skipped"]
        frame = done["readiness"]["records"]
        assert not [r for r in frame if r["severity"] == "CRITICAL" and r["status"] != "SUCCESS"]
