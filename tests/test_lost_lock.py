"""The faults a real deployment meets, each injected into a real run of the CLI against a served cluster: the
orchestrator frozen past its lease (SIGSTOP, as a suspended VM or a closed laptop) while another machine takes the
cluster over, then woken; the Prefect server killed and restarted mid-install (PostgreSQL taken away:
tests/test_lost_stores.py). Checked on the
simulator's event log and the runs' own words: never two nodes out of service, nothing done by a run that has lost
the cluster, every node it leaves named, the cluster finished (DESIGN.md invariants 1, 3 and 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx

from flows.locking import limit_name
from hciupgrade.records.store import RecordStore
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.scenario import Durations, make_scenario
from tests.services import PrefectServer
from tests.test_crash_resume import read_events, served_cluster, wait_for_event
from tests.test_shared_records import machine

OPTIONS = {"NodeOrder": ["node1", "node2", "node3"], "poll_seconds": 5, "retry_delay_seconds": 0.1}


def slow_scenario(factor: float = 500):
    """Three nodes, setup 30 cluster minutes: at x500 a node takes about 15 s, so faults land mid-step."""
    return make_scenario(nodes=3, vms_per_node=2, time_factor=factor).model_copy(update={"durations": Durations(
        install_minutes=30, install_spread_minutes=0, feature_update_restart_minutes=10, reboot_minutes=5)})


def outcome_of(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def after(log: list[dict], index: int, run_id: str) -> list[str]:
    """What a run changed on the cluster from an index of the event log on (owned scripts log their run)."""
    return [f"{e['kind']} {e.get('node')}" for e in log[index:] if e.get("run") == run_id]


def test_a_run_frozen_past_its_lease_is_taken_over_and_does_nothing_when_it_wakes(tmp_path, server_on):
    server, records = server_on
    options = {**OPTIONS, "lock_lease_seconds": 60}  # the least a Prefect server accepts
    with served_cluster(tmp_path, tmp_path / "unused", options, slow_scenario()) as (upgrade, env, events, scenario):
        first = subprocess.Popen(upgrade, env=machine(env, tmp_path, "worker-a", records, server.api),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            wait_for_event(events, {"kind": "install", "node": "node2", "status": "Running"}, timeout=240)
            os.killpg(first.pid, signal.SIGSTOP)  # frozen: its lease renewal, heartbeat and steps all stop
            frozen_at = len(read_events(events))
            second_env = {**machine(env, tmp_path, "worker-b", records, server.api),
                          "HCI_UPGRADE_LOCK_REPORT_SECONDS": "5"}
            second = subprocess.Popen(upgrade, env=second_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)
            wait_for_event(events, {"kind": "suspend", "node": "node3"}, timeout=240)  # B is on the next node
            os.killpg(first.pid, signal.SIGCONT)
            out_a, err_a = first.communicate(timeout=300)
            out_b, err_b = second.communicate(timeout=300)
        finally:
            for process in (first,):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
    log = read_events(events)
    a, b = outcome_of(out_a), outcome_of(out_b)
    # A: stopped at once, said why and what it leaves, and changed nothing after it woke
    assert first.returncode == 1, err_a[-2000:]
    assert a["error"].startswith("LostOwnership: "), a["error"]
    assert "node2" in a["error"] and "left as they are" in a["error"]
    assert after(log, frozen_at, a["run_id"]) == []
    # B: found A dead by its heartbeat, reclaimed the slot A's lease held, took node2 over and finished
    assert second.returncode == 0, err_b[-3000:]
    assert {n["node"]: n["result"] for n in b["nodes"]} == {"node1": "skipped", "node2": "upgraded",
                                                            "node3": "upgraded"}
    assert "held by no live run of it in the records" in err_b and "dead by the records" in err_b
    taken = [e for e in log if e["kind"] == "mark" and e.get("status") == "taken-over"]
    assert [(e["node"], e["previous"], e["run"]) for e in taken] == [("node2", a["run_id"], b["run_id"])]
    assert check_invariants(log, scenario, b, SIM_USER) == []  # 1 to 4, and 8: no change under an older fence
    assert sorted(e["node"] for e in log if e["kind"] == "suspend") == ["node1", "node2", "node3"]  # once each
    # no ghost: A's flow run is not left Running, and its record ended with what it did
    store = RecordStore(records)
    assert store.runs(cluster=scenario.cluster.name, open_only=True) == []
    assert [r["status"] for r in store.runs(run_ids=[a["run_id"]])] == ["failed"]


def prefect_limit(api: str, cluster: str) -> dict:
    return httpx.get(f"{api}/v2/concurrency_limits/{limit_name(cluster)}", timeout=10).json()


def test_a_prefect_server_killed_and_restarted_mid_install_costs_nothing(tmp_path):
    server = PrefectServer(tmp_path / "prefect-server")  # on SQLite, as the issue found it
    server.start()
    options = {**OPTIONS, "lock_lease_seconds": 120}
    try:
        with served_cluster(tmp_path, tmp_path / "unused", options, slow_scenario()) as (upgrade, env, events,
                                                                                        scenario):
            run_env = {**env, "PREFECT_API_URL": server.api, "PREFECT_HOME": str(tmp_path / "client")}
            first = subprocess.Popen(upgrade, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
            wait_for_event(events, {"kind": "install", "node": "node2", "status": "Running"}, timeout=240)
            server.kill()
            time.sleep(2)
            server.start()
            out, err = first.communicate(timeout=400)
            assert first.returncode == 0, err[-3000:]
            assert prefect_limit(server.api, scenario.cluster.name)["active_slots"] == 0  # the lock is free
            again = subprocess.run(upgrade, env=run_env, capture_output=True, text=True, timeout=300)
        log = read_events(events)
    finally:
        server.stop()
    outcome = outcome_of(out)
    assert {n["node"]: n["result"] for n in outcome["nodes"]} == {f"node{i}": "upgraded" for i in (1, 2, 3)}
    assert check_invariants(log, scenario, outcome, SIM_USER) == []
    assert again.returncode == 0, again.stderr[-2000:]  # the next run takes the lock at once, finds nothing to do
    assert {n["result"] for n in outcome_of(again.stdout)["nodes"]} == {"skipped"}
