"""A large fleet's shape on Prefect's distributed engine, all real: a throwaway PostgreSQL, a Prefect server on
it, the deployment file deployed, two process workers (two machines sharing one record store), four simulated
clusters, and `hci-upgrade fleet --batch-deployment`: two clusters a batch run. One worker is killed with its batch
mid-upgrade. Checked through Prefect's API, the records and the simulators' event log: the dead batch is set
Crashed by the zombie automation, a new batch run on the other worker adopts its clusters, every cluster ends
upgraded, K holds across the batches, and never two nodes of one cluster are out of service at once."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import yaml

from hciupgrade.records.store import RecordStore
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import PASSWORD_ENV, SIM_USER
from hciupgrade.sim.scenario import Durations, make_scenario, parse_scenario
from tests.conftest import CLI
from tests.services import PREFECT, create_database, prefect_server, stop
from tests.test_crash_resume import read_events, wait_for_event
from tests.test_deployments import ROOT

K = 3  # four clusters in two batches of two: the fourth waits for a slot, whichever batch holds the other three


def serve_four(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, Path, Path]:
    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=1000, name="hci-b")
    scenario = scenario.model_copy(update={"durations": Durations(install_spread_minutes=0)})
    source = tmp_path / "batch.yaml"
    source.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    served, events = tmp_path / "served.yaml", tmp_path / "events.jsonl"
    serve = subprocess.Popen([*CLI, "sim", "serve", "--scenario", str(source), "--copies", "4", "--inventory-out",
                              str(served), "--events", str(events)], env=env, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 60
    while not served.exists():
        assert time.monotonic() < deadline, "sim serve did not start"
        time.sleep(0.1)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"clusters": yaml.safe_load(served.read_text())["clusters"],
                                     "waves": {"batch": 4, "max_parallel": K, "max_failure_rate": 0.0}}))
    return serve, fleet, events


def kill_tree(pid: int) -> None:
    """A machine lost: the worker and every process it started, at once."""
    process = psutil.Process(pid)
    for p in [process, *process.children(recursive=True)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def batch_runs(api: str) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"like_": "batch-"}},
                                                       "sort": "START_TIME_ASC"}, timeout=10).json()


def test_a_worker_killed_mid_batch_leaves_its_clusters_to_a_new_batch_run(tmp_path, postgres_server):
    sim_env = {**os.environ, PASSWORD_ENV: "batch-secret"}
    serve, fleet, events = serve_four(tmp_path, sim_env)
    records = create_database(postgres_server, "batch_records")
    try:
        with prefect_server(tmp_path / "prefect", create_database(postgres_server, "batch_prefect")) as (api, env):
            subprocess.run([*PREFECT, "work-pool", "create", "hci-upgrade-process", "--type", "process"], env=env,
                           check=True, capture_output=True, timeout=120)
            deployed = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                                       "--all"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
            machines = {}
            for host in ("worker-1", "worker-2", "operator"):
                (tmp_path / host).mkdir()
                machines[host] = {**sim_env, **env, PASSWORD_ENV: sim_env[PASSWORD_ENV],
                                  "HCI_UPGRADE_CHECKOUT": str(ROOT), "HCI_UPGRADE_HOME": str(tmp_path / host),
                                  "HCI_UPGRADE_HOST": host, "HCI_UPGRADE_RECORDS_URL": records,
                                  "HCI_UPGRADE_HEARTBEAT_SECONDS": "5",  # a dead run is known dead after 20 s
                                  "HCI_UPGRADE_LOCK_REPORT_SECONDS": "5"}
            workers = {host: subprocess.Popen([*PREFECT, "worker", "start", "--pool", "hci-upgrade-process",
                                               "--name", host], env=machines[host], cwd=tmp_path / host,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              start_new_session=True)
                       for host in ("worker-1", "worker-2")}
            options = tmp_path / "options.yaml"
            options.write_text(yaml.safe_dump({"poll_seconds": 10, "retry_delay_seconds": 0.1,
                                               "lock_lease_seconds": 60, "target_build": "10.0.25398.1486"}))
            # the fleet itself runs on the operator's machine; only the batches go to the workers
            fleet_run = subprocess.Popen([*CLI, "fleet", "--inventory", str(fleet), "--options", str(options),
                                          "--batch-deployment", "fleet-batch/fleet-batch", "--clusters-per-run", "2",
                                          "--json"], env=machines["operator"], cwd=tmp_path / "operator",
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         start_new_session=True)
            try:
                wait_for_event(events, {"kind": "drain", "node": "node1", "status": "InProgress"}, timeout=300)
                running = [r for r in batch_runs(api) if r["state"]["type"] == "RUNNING"]
                victim = next(r for r in running
                              if any(e.get("cluster") in r["parameters"]["clusters"] and e["kind"] == "drain"
                                     for e in read_events(events)))
                pid = int(str(victim["infrastructure_pid"]).rsplit(":", 1)[-1])
                worker = next(h for h, w in workers.items()
                              if pid in {c.pid for c in psutil.Process(w.pid).children(recursive=True)})
                kill_tree(workers[worker].pid)
                out, err = fleet_run.communicate(timeout=900)
            finally:
                for process in (fleet_run, *workers.values()):
                    stop(process)
            runs = batch_runs(api)
    finally:
        stop(serve)
    assert fleet_run.returncode == 0, out[-3000:] + err[-3000:]
    summary = yaml.safe_load(out[out.index("{"):])
    assert {c["cluster"]: c["state"] for c in summary["clusters"]} == {f"hci-b-00{i}": "upgraded" for i in range(1, 5)}

    # Prefect's view: the killed batch Crashed (by the zombie automation, no hand of ours), and a later batch run,
    # taken by the worker left, carries its clusters to the end
    dead = next(r for r in runs if r["id"] == victim["id"])
    assert dead["state"]["type"] == "CRASHED", dead["state"]
    adopters = [r for r in runs if r["parameters"]["clusters"] == victim["parameters"]["clusters"]
                and r["id"] != victim["id"]]
    assert [r["state"]["type"] for r in adopters] == ["COMPLETED"], [(r["name"], r["state"]) for r in runs]

    # the simulators' view: each cluster upgraded, never two of its nodes out of service at once
    log = read_events(events)
    scenario = parse_scenario(yaml.safe_load((tmp_path / "batch.yaml").read_text()))
    for i in range(1, 5):
        mine = [e for e in log if e["cluster"] == f"hci-b-00{i}"]
        assert {e["node"] for e in mine if e["kind"] == "build"} == {"node1", "node2"}
        assert check_invariants(mine, scenario, None, SIM_USER) == [], f"hci-b-00{i}"

    # K across batches and machines (the records): never more than K clusters in a run at once; a dead run counts
    # until the last event it wrote itself (its end and heartbeat are written by the run that found it dead)
    store = RecordStore(records)
    spans = []
    for run in store.runs(real_only=True):
        end = run["ended"] or "9"
        if run["status"] == "crashed":
            end = max(e["start"] for e in store.events(run_ids=[run["run_id"]]) if "found_by" not in e)
        spans.append((run["cluster"], run["started"], end))
    busiest = max(len({c for c, s, e in spans if s <= t < e}) for _, t, _ in spans)
    assert busiest <= K, spans
    hosts = {r["host"] for r in RecordStore(records).runs(real_only=True)}
    assert hosts <= {"worker-1", "worker-2"} and len(hosts) == 2  # both machines ran clusters: the dead and the left
