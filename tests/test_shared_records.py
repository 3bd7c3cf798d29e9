"""Two machines (two HCI_UPGRADE_HOMEs, told apart by HCI_UPGRADE_HOST) sharing one record store on PostgreSQL:
a run killed mid-drain on one is adopted and finished on the other against one Prefect server, and a run alive
on one blocks a run on the other with RunInProgress naming the run and the machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from hciupgrade.records.store import RecordStore
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.scenario import Durations, make_scenario
from tests.services import create_database, prefect_server
from tests.test_crash_resume import read_events, served_cluster, wait_for_event

OPTIONS = {"NodeOrder": ["node1", "node2", "node3"], "poll_seconds": 5, "retry_delay_seconds": 0.1,
           "lock_lease_seconds": 60}  # the least a Prefect server accepts


@pytest.fixture(scope="module")
def server_api(tmp_path_factory, postgres_server):
    with prefect_server(tmp_path_factory.mktemp("prefect-shared"),
                        create_database(postgres_server, "prefect_shared")) as (api, _):
        yield api


@pytest.fixture
def shared(postgres_server, server_api, request):
    """A records database of the test's own and the Prefect server, both on the session's PostgreSQL."""
    return create_database(postgres_server, f"records_{request.node.name[5:40]}"), server_api


def machine(env: dict, root: Path, host: str, records: str, api: str | None) -> dict:
    home = root / host
    home.mkdir(exist_ok=True)
    machine_env = {**env, "HCI_UPGRADE_HOME": str(home), "HCI_UPGRADE_HOST": host,
                   "HCI_UPGRADE_RECORDS_URL": records, "PREFECT_HOME": str(home / "prefect"),
                   "HCI_UPGRADE_HEARTBEAT_SECONDS": "5",  # a killed run is known dead after 20 s, not 2 min
                   "HCI_UPGRADE_LOCK_REPORT_SECONDS": "5"}  # and a waiter reclaims its slot 5 s later, not 60
    if api:
        machine_env["PREFECT_API_URL"] = api
    return machine_env


def test_a_run_killed_mid_drain_on_one_worker_is_finished_on_another(tmp_path, shared):
    records, api = shared
    with served_cluster(tmp_path, tmp_path / "unused", OPTIONS) as (upgrade, env, events, scenario):
        first = subprocess.Popen(upgrade, env=machine(env, tmp_path, "worker-a", records, api),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_event(events, {"kind": "drain", "node": "node2", "status": "InProgress"})
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        # the other machine waits for the killed run's lease on the cluster lock, then adopts its node
        second = subprocess.run(upgrade, env=machine(env, tmp_path, "worker-b", records, api), capture_output=True,
                                text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    outcome = json.loads(second.stdout)
    results = {n["node"]: n["result"] for n in outcome["nodes"]}
    assert results == {"node1": "skipped", "node2": "upgraded", "node3": "upgraded"}
    log = read_events(events)
    assert sorted(e["node"] for e in log if e["kind"] == "suspend") == ["node1", "node2", "node3"]  # once each
    store = RecordStore(records)
    killed = [r for r in store.runs(cluster=scenario.cluster.name) if r["host"] == "worker-a"]
    assert [r["status"] for r in killed] == ["crashed"]  # no ghost: the run that finished the cluster ended it
    assert store.runs(cluster=scenario.cluster.name, open_only=True) == []
    adopted = [e for e in store.events(run_ids=[outcome["run_id"]], phases=["ownership"]) if e.get("adopted_from")]
    assert [(e["node"], e["adopted_from"]) for e in adopted] == [("node2", killed[0]["run_id"])]
    taken = [e for e in store.events(run_ids=[outcome["run_id"]], phases=["ownership"]) if e.get("taken_over_from")]
    assert [(e["node"], e["taken_over_from"]) for e in taken] == [("node2", killed[0]["run_id"])]  # its mark too
    assert store.runs(run_ids=[outcome["run_id"]])[0]["host"] == "worker-b"
    assert check_invariants(log, scenario, outcome, SIM_USER) == []
    # and Prefect does not show the killed run Running for good: Crashed, with the machine and process named
    flow_run = next(e["flow_run_id"] for e in store.events(run_ids=[killed[0]["run_id"]], phases=["run"])
                    if e.get("flow_run_id"))
    state = httpx.get(f"{api}/flow_runs/{flow_run}", timeout=10).json()["state"]
    assert state["type"] == "CRASHED" and f"worker-a (process {killed[0]['pid']})" in state["message"]


def test_a_run_alive_on_another_machine_blocks_with_run_in_progress(tmp_path, shared):
    records, _ = shared
    slow = make_scenario(nodes=3, time_factor=200).model_copy(update={"durations": Durations(
        install_minutes=120, install_spread_minutes=0)})  # 36 s of setup on node1: the second run starts meanwhile
    with served_cluster(tmp_path, tmp_path / "unused", OPTIONS, slow) as (upgrade, env, events, scenario):
        # embedded mode on both: no Prefect lock is shared, the records are what tells them apart
        first = subprocess.Popen(upgrade, env=machine(env, tmp_path, "laptop-a", records, None),
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 start_new_session=True)
        try:
            wait_for_event(events, {"kind": "install", "node": "node1"})
            second = subprocess.run(upgrade, env=machine(env, tmp_path, "laptop-b", records, None),
                                    capture_output=True, text=True, timeout=300)
            log = read_events(events)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert second.returncode == 1
    refused = json.loads(second.stdout)
    running = RecordStore(records).runs(cluster=scenario.cluster.name, open_only=True)
    assert [r["host"] for r in running] == ["laptop-a"]
    assert refused["error"].startswith(f"RunInProgress: run {running[0]['run_id']} is upgrading "
                                       f"{scenario.cluster.name} on laptop-a"), refused["error"]
    assert all(not n["attempts"] for n in refused["nodes"])
    assert [e["node"] for e in log if e["kind"] == "suspend"] == ["node1"]  # the first run's, nothing of the second
