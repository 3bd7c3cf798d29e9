"""A fleet on Prefect's distributed engine, all real: a throwaway PostgreSQL, a Prefect server on it, the deployment
file deployed, two process workers on one pool (two machines: each its own home and host name, one shared record
store), and simulated clusters served by one `hci-upgrade sim serve` process. Checked through Prefect's API and the
simulators' event log: every cluster upgraded, K respected, never two nodes of one cluster out of service at once
(although a second run of one cluster was started beside the fleet's), and a failing canary stops the waves."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from hciupgrade.models import RunOptions
from hciupgrade.records.store import RecordStore
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import PASSWORD_ENV, SIM_USER
from hciupgrade.sim.scenario import Durations, make_scenario, parse_scenario
from tests.conftest import CLI
from tests.services import PREFECT, create_database, prefect_server, stop
from tests.test_crash_resume import read_events
from tests.test_deployments import ROOT, wait_for_run

# x5000: a restart is half a second; the timeouts get room for a loaded machine (parallel tests)
FAST = {"poll_seconds": 10, "retry_delay_seconds": 0.1, "target_build": "10.0.25398.1486",
        "FeatureUpdateRebootTimeoutMinutes": 600, "RebootTimeoutMinutes": 120, "install_timeout_minutes": 1200}


def scenario_file(path: Path, name: str, faults: list | None = None) -> Path:
    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=5000, faults=faults, name=name)
    scenario = scenario.model_copy(update={"durations": Durations(install_spread_minutes=0,
                                                                  feature_update_restart_minutes=10)})
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    return path


@pytest.fixture
def served_fleet(tmp_path):
    """hci-good (canary), hci-prod-001..003, hci-bad (a canary whose setup fails) and hci-late, in one process."""
    files = [scenario_file(tmp_path / "good.yaml", "hci-good"), scenario_file(tmp_path / "late.yaml", "hci-late"),
             scenario_file(tmp_path / "bad.yaml", "hci-bad", [{"node": "node1", "kind": "install_fails"}])]
    prod = scenario_file(tmp_path / "prod.yaml", "hci-prod")
    inventory, events = tmp_path / "served.yaml", tmp_path / "events.jsonl"
    env = {**os.environ, PASSWORD_ENV: "fleet-secret"}
    serves = [subprocess.Popen([*CLI, "sim", "serve", *[a for f in files for a in ("--scenario", str(f))],
                                "--inventory-out", str(inventory), "--events", str(events)], env=env,
                               stderr=subprocess.DEVNULL, start_new_session=True),
              subprocess.Popen([*CLI, "sim", "serve", "--scenario", str(prod), "--copies", "3", "--inventory-out",
                                str(tmp_path / "prod-served.yaml"), "--events", str(tmp_path / "prod-events.jsonl")],
                               env=env, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 60
        while not (inventory.exists() and (tmp_path / "prod-served.yaml").exists()):
            assert time.monotonic() < deadline, "sim serve did not start"
            time.sleep(0.1)
        clusters = yaml.safe_load(inventory.read_text())["clusters"] + \
            yaml.safe_load((tmp_path / "prod-served.yaml").read_text())["clusters"]
        tags = {"hci-good": {"fleet": "one", "ring": "canary"}, "hci-bad": {"fleet": "two", "ring": "canary"},
                "hci-late": {"fleet": "two", "ring": "prod"}}
        for c in clusters:
            c["tags"] = tags.get(c["name"], {"fleet": "one", "ring": "prod"})
        fleet = tmp_path / "fleet.yaml"
        fleet.write_text(yaml.safe_dump({"clusters": clusters, "waves": {"batch": 3, "max_parallel": 2,
                                                                         "max_failure_rate": 0.0}}))
        yield fleet, [events, tmp_path / "prod-events.jsonl"], env
    finally:
        for serve in serves:
            stop(serve)


def test_a_fleet_runs_on_a_server_with_two_workers(tmp_path, postgres_server, served_fleet):
    fleet, event_logs, sim_env = served_fleet
    records = create_database(postgres_server, "fleet_records")
    with prefect_server(tmp_path / "prefect", create_database(postgres_server, "fleet_prefect")) as (api, env):
        subprocess.run([*PREFECT, "work-pool", "create", "hci-upgrade-process", "--type", "process"], env=env,
                       check=True, capture_output=True, timeout=120)
        deployed = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                                   "--all"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        workers = []
        for host in ("worker-1", "worker-2"):
            home = tmp_path / host
            home.mkdir()
            # the simulators' password wins over whatever another test of this process left in the environment
            worker_env = {**sim_env, **env, PASSWORD_ENV: sim_env[PASSWORD_ENV], "HCI_UPGRADE_CHECKOUT": str(ROOT),
                          "HCI_UPGRADE_HOME": str(home), "HCI_UPGRADE_HOST": host, "HCI_UPGRADE_RECORDS_URL": records}
            log = open(home / "worker.log", "w")  # noqa: SIM115 - closed with the worker
            workers.append(subprocess.Popen([*PREFECT, "worker", "start", "--pool", "hci-upgrade-process",
                                             "--name", host], env=worker_env, cwd=home, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
        try:
            # both workers polling before the first run: which one takes a run is theirs to race for, but a worker
            # still starting on a loaded machine would leave every run to the other
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                seen = httpx.post(f"{api}/work_pools/hci-upgrade-process/workers/filter", json={}, timeout=10).json()
                if {w["name"] for w in seen if w.get("status") == "ONLINE"} >= {"worker-1", "worker-2"}:
                    break
                time.sleep(1)

            def start(name: str, parameters: dict) -> str:
                deployment = httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
                created = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                                     json={"parameters": parameters}, timeout=10)
                assert created.status_code == 201, created.text
                return created.json()["id"]

            options = RunOptions(**FAST).model_dump(mode="json", by_alias=True, exclude_none=True)
            one = start("fleet-upgrade/fleet", {"inventory": str(fleet), "tags": ["fleet=one"], "options": options})
            # a second run of a fleet cluster, beside the fleet's own: the cluster lock keeps them apart
            extra = start("rolling-upgrade/rolling-upgrade-fleet", {"inventory": str(fleet), "cluster": "hci-prod-002",
                                                                    "options": options})
            fleet_one, extra_run = wait_for_run(api, one, timeout=600), wait_for_run(api, extra, timeout=600)
            two = wait_for_run(api, start("fleet-upgrade/fleet", {"inventory": str(fleet), "tags": ["fleet=two"],
                                                                  "options": options}), timeout=600)
            child_runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {
                "any_": [one]}}}, timeout=10).json()
        finally:
            for worker in workers:
                stop(worker)
    logs = "".join((tmp_path / host / "worker.log").read_text() for host in ("worker-1", "worker-2"))
    assert "database is locked" not in logs  # PostgreSQL under the server: no SQLite lock between workers
    assert fleet_one["state"]["type"] == "COMPLETED", fleet_one["state"]
    assert extra_run["state"]["type"] in ("COMPLETED", "FAILED"), extra_run["state"]
    # through Prefect's API: the fleet's children, one completed run of the deployment per cluster of the fleet
    assert sorted(r["name"] for r in child_runs) == ["upgrade-hci-good", "upgrade-hci-prod-001",
                                                     "upgrade-hci-prod-002", "upgrade-hci-prod-003"]
    assert {r["state"]["type"] for r in child_runs} == {"COMPLETED"}
    children = _children(api_runs(records))
    log = [event for path in event_logs for event in read_events(path)]
    for cluster, source in (("hci-good", "good.yaml"), ("hci-prod-001", "prod.yaml"), ("hci-prod-002", "prod.yaml"),
                            ("hci-prod-003", "prod.yaml")):
        mine = [e for e in log if e["cluster"] == cluster]
        assert {e["node"] for e in mine if e["kind"] == "build"} == {"node1", "node2"}, cluster
        scenario = parse_scenario(yaml.safe_load((fleet.parent / source).read_text()))
        assert check_invariants(mine, scenario, None, SIM_USER) == [], cluster
    # K = 2: never more than two clusters of the fleet in their run at once (from the shared records)
    spans = [(r["started"], r["ended"] or "9") for c in ("hci-good", "hci-prod-001", "hci-prod-003")
             for r in children[c]]
    assert max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans) <= 2, spans
    # any worker of the pool may take a cluster's run (which one is the workers' race: both were polling), and
    # each run's record names the worker it ran on
    assert {r["host"] for runs in children.values() for r in runs} <= {"worker-1", "worker-2"}
    # the second fleet: its canary fails, so hci-late is never started
    assert two["state"]["type"] == "COMPLETED"
    assert "hci-late" not in children and any(r["status"] == "failed" for r in children["hci-bad"])


def api_runs(records: str) -> list[dict]:
    return RecordStore(records).runs(real_only=True)


def _children(runs: list[dict]) -> dict[str, list[dict]]:
    by_cluster: dict[str, list[dict]] = {}
    for run in runs:
        by_cluster.setdefault(run["cluster"].lower(), []).append(run)
    return by_cluster
