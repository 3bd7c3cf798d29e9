"""PostgreSQL (the Prefect server's database and the shared run records) restarted mid-drain and stopped for 60 s
mid-install under a real run of the CLI against a served cluster: the run finishes, every event reaches the store in
order, and Prefect shows the run as it ended (DESIGN.md: cluster actions first, records follow). Kept apart from
tests/test_lost_lock.py so the two share the test workers."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from uuid import UUID

import httpx
import pytest

from hciupgrade.records.store import RecordStore
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER
from tests.test_crash_resume import read_events, served_cluster, wait_for_event
from tests.test_lost_lock import OPTIONS, outcome_of, slow_scenario
from tests.test_shared_records import machine


@pytest.mark.parametrize("fault", ["restart-mid-drain", "stopped-60s-mid-install"])
def test_postgresql_restarted_or_stopped_under_a_run_costs_nothing(tmp_path, pg, server_on, fault):
    server, records = server_on
    options = {**OPTIONS, "lock_lease_seconds": 120}
    with served_cluster(tmp_path, tmp_path / "unused", options, slow_scenario(200)) as (upgrade, env, events,
                                                                                       scenario):
        run_env = {**machine(env, tmp_path, "worker-a", records, server.api),
                   "HCI_UPGRADE_RECORDS_RETRY_SECONDS": "5"}
        run = subprocess.Popen(upgrade, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
        try:
            if fault == "restart-mid-drain":
                wait_for_event(events, {"kind": "drain", "node": "node2", "status": "InProgress"}, timeout=240)
                pg.stop("fast")
                pg.start()
            else:
                wait_for_event(events, {"kind": "install", "node": "node2", "status": "Running"}, timeout=240)
                pg.stop()
                time.sleep(60)
                pg.start()
            out, err = run.communicate(timeout=600)
        finally:
            pg.start()  # whatever happened, the next test has its database
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    log = read_events(events)
    assert run.returncode == 0, err[-3000:]
    outcome = outcome_of(out)
    assert {n["node"]: n["result"] for n in outcome["nodes"]} == {f"node{i}": "upgraded" for i in (1, 2, 3)}
    assert check_invariants(log, scenario, outcome, SIM_USER) == []
    # the records caught up: every node's end is in the shared store, in order, and the run is closed
    store = RecordStore(records)
    ends = [e["node"] for e in store.events(run_ids=[outcome["run_id"]], phases=["node"]) if e["status"] != "running"]
    assert ends == ["node1", "node2", "node3"]
    assert [r["status"] for r in store.runs(run_ids=[outcome["run_id"]])] == ["succeeded"]
    assert not list((tmp_path / "worker-a" / "spool").glob("*.jsonl"))
    # Prefect shows the run as it ended
    runs = httpx.post(f"{server.api}/flow_runs/filter", json={"limit": 5}, timeout=10).json()
    states = {r["id"]: r["state"]["type"] for r in runs}
    flow_run = next(e["flow_run_id"] for e in store.events(run_ids=[outcome["run_id"]], phases=["run"])
                    if e.get("flow_run_id"))
    assert states[str(UUID(flow_run))] == "COMPLETED"
