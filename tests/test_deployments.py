"""The README's server path, followed from this checkout: a real Prefect server on a loopback port, a process work
pool and worker, `prefect deploy` of deployments/prefect.yaml, and each deployment run against a served simulated
cluster, its result read through Prefect's API."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from hciupgrade.sim.harness import PASSWORD_ENV
from hciupgrade.sim.scenario import make_scenario
from tests.conftest import serve_cluster
from tests.services import PREFECT, create_database, prefect_server, stop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path, postgres_server):
    """The Prefect server on PostgreSQL, as in production."""
    with prefect_server(tmp_path / "prefect", create_database(postgres_server, "prefect_deploy")) as started:
        yield started


def wait_for_run(api: str, flow_run_id: str, timeout: float = 420) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish: {run['state']}")


def test_the_deployment_file_deploys_and_each_deployment_runs_through_a_process_worker(server, tmp_path):
    api, env = server
    subprocess.run([*PREFECT, "work-pool", "create", "hci-upgrade-process", "--type", "process"], env=env,
                   check=True, capture_output=True, timeout=120)
    deployed = subprocess.run([*PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                               "--all"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
    assert names == {"rolling-upgrade-hci-demo", "full-upgrade-hci-demo", "finish-hci-demo", "readiness-fleet", "fleet",
                     "fleet-batch", "rolling-upgrade-fleet"}

    # set up for the second hop (CredSSP), so the full upgrade's Test-Cluster reaches every node
    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=5000, knobs={"second_hop": "allowed"})
    with serve_cluster(scenario, tmp_path, {}) as (inventory, sim_env, events):
        # the simulator's password wins over whatever another test of this process left in the environment
        worker_env = {**sim_env, **env, PASSWORD_ENV: sim_env[PASSWORD_ENV], "HCI_UPGRADE_CHECKOUT": str(ROOT),
                      "HCI_UPGRADE_HOME": str(tmp_path / "records")}
        worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "hci-upgrade-process"], env=worker_env,
                                  cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            # x5000: a restart is half a second; the timeouts get room for a loaded machine (parallel tests)
            fast = {"poll_seconds": 10, "retry_delay_seconds": 0.1, "target_build": "10.0.25398.1486",
                    "FeatureUpdateRebootTimeoutMinutes": 600, "RebootTimeoutMinutes": 120,
                    "install_timeout_minutes": 1200}
            results = {}
            for name, parameters in (
                    ("rolling-upgrade/rolling-upgrade-hci-demo", {"inventory": str(inventory), "options": fast}),
                    ("full-upgrade/full-upgrade-hci-demo",
                     {"inventory": str(inventory), "options": {k: v for k, v in fast.items() if k != "target_build"},
                      "approval": {"approver": "ci", "reason": "deployment test"}}),
                    ("readiness/readiness-fleet", {"inventory": str(inventory), "out_dir": str(tmp_path / "out")})):
                deployment = httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
                created = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                                     json={"parameters": parameters}, timeout=10)
                assert created.status_code == 201, created.text
                results[name] = wait_for_run(api, created.json()["id"])
        finally:
            stop(worker)
    for name, run in results.items():
        assert run["state"]["type"] == "COMPLETED", (name, run["state"]["type"], run["state"]["message"])
    assert results["rolling-upgrade/rolling-upgrade-hci-demo"]["name"] == "upgrade-hci-demo"
    log = [yaml.safe_load(line) for line in events.read_text().splitlines()]
    assert [e["new"] for e in log if e["kind"] == "functional_level"] == [12]
    assert (tmp_path / "out" / "readiness.parquet").exists()
