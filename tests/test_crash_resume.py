"""Kill the orchestrator with SIGKILL at several points, run the same command again, and the upgrade completes:
nodes already upgraded are skipped, the node left paused is adopted, nothing is drained twice, and the cluster
lock is free again at once on this machine. The simulated cluster runs in its own process, as a real one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER
from hciupgrade.sim.scenario import make_scenario, parse_scenario
from tests.conftest import CLI, serve_cluster


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")  # shared by the runs, so the database migrates once


def slow_drain_scenario():
    data = make_scenario(nodes=3, time_factor=1000).model_dump()
    data["durations"] = {"live_migration_gb_per_s": 0.1, "install_minutes": 30, "install_spread_minutes": 0,
                         "reboot_minutes": 10, "feature_update_restart_minutes": 10}
    return parse_scenario(data)


def read_events(path: Path) -> list[dict]:
    # The simulator appends while we read: the text after the last newline may be half a line, so it is left
    # for the next read.
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for_event(path: Path, match: dict, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(all(e.get(k) == v for k, v in match.items()) for e in read_events(path)):
            return
        time.sleep(0.01)
    raise AssertionError(f"no event {match} within {timeout} s")


@contextmanager
def served_cluster(tmp_path: Path, prefect_home: Path, options: dict, scenario: Any = None
                   ) -> Iterator[tuple[list[str], dict, Path, Any]]:
    """The slow-drain cluster (or the given one) in its own process; yields the upgrade command, its environment,
    the event log and the scenario."""
    scenario = scenario or slow_drain_scenario()
    options_file = tmp_path / "o.yaml"
    options_file.write_text(yaml.safe_dump(options))
    with serve_cluster(scenario, tmp_path, {"PREFECT_HOME": str(prefect_home)}) as (inventory, env, events):
        yield ([*CLI, "upgrade", "--inventory", str(inventory), "--options", str(options_file), "--json"], env,
               events, scenario)


@pytest.mark.parametrize("kill_at", [
    {"kind": "drain", "node": "node2", "status": "InProgress"},
    {"kind": "install", "node": "node2", "status": "Running"},
    {"kind": "restart", "node": "node2"},
    {"kind": "storage_job", "node": "node2", "status": "Running"},
], ids=["mid-drain", "mid-install", "during-reboot", "during-repair-wait"])
def test_a_killed_run_is_completed_by_the_next_one(tmp_path, prefect_home, kill_at):
    options = {"NodeOrder": ["node1", "node2", "node3"], "poll_seconds": 5, "retry_delay_seconds": 0.1}
    with served_cluster(tmp_path, prefect_home, options) as (upgrade, env, events, scenario):
        # its own process group: the kill takes the orchestrator with its embedded Prefect server, as a crash of
        # the machine or container would, and leaves no orphan behind
        first = subprocess.Popen(upgrade, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        wait_for_event(events, kill_at)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        second = subprocess.run(upgrade, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        outcome = json.loads(second.stdout)
    log = read_events(events)
    assert outcome["succeeded"]
    results = {n["node"]: n["result"] for n in outcome["nodes"]}
    # node2 is finished by the second run, or found finished (killed after its resume) and skipped
    assert results["node1"] == "skipped" and results["node3"] == "upgraded"
    assert results["node2"] == ("skipped" if kill_at["kind"] == "storage_job" else "upgraded")
    settle = [e for e in log if e["kind"] == "storage_job" and e["status"] == "Completed"]
    assert settle and all(d["health"] == "Healthy" for d in _final_disks(log).values())
    assert {e["node"] for e in log if e["kind"] == "build"} == {"node1", "node2", "node3"}
    drains = [e["node"] for e in log if e["kind"] == "suspend"]
    assert sorted(drains) == ["node1", "node2", "node3"], f"drained twice: {drains}"
    assert sum(1 for e in log if e["kind"] == "restart" and e["node"] == "node2") == 1
    assert check_invariants(log, scenario, outcome, SIM_USER) == []


def _final_disks(log: list[dict]) -> dict[str, dict]:
    disks: dict[str, dict] = {}
    for e in log:
        if e["kind"] == "disk_health":
            disks[e["disk"]] = e
    return disks
