"""Runs that end another way than by finishing, against a simulated cluster in its own process: a run cancelled
(SIGTERM, as Prefect cancels) brings its node back; two runs started together never overlap; killing the CLI leaves
no process behind; a run killed while staging is finished by the next without staging twice. Split from
test_crash_resume.py so the two files run on separate test workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER
from tests.test_crash_resume import read_events, served_cluster, wait_for_event


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")  # shared by the runs, so the database migrates once


def test_a_cancelled_run_brings_the_current_node_back(tmp_path, prefect_home):
    """Prefect cancels a flow run by sending SIGTERM to its process (the UI's Cancel, the API, a worker)."""
    options = {"NodeOrder": ["node1", "node2", "node3"], "poll_seconds": 5}
    with served_cluster(tmp_path, prefect_home, options) as (upgrade, env, events, scenario):
        run = subprocess.Popen(upgrade, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        wait_for_event(events, {"kind": "install", "node": "node1", "status": "Running"})
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=120)
        try:  # Prefect's embedded server outlives a cancelled process: do not leave it behind
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
    assert run.returncode != 0
    log = read_events(events)
    assert any(e["kind"] == "install" and e["status"] == "Stopped" and e["node"] == "node1" for e in log)
    assert any(e["kind"] == "resume" and e["node"] == "node1" for e in log)
    assert not any(e["kind"] == "restart" for e in log)
    states = {}
    for e in log:
        if e["kind"] == "node_state":
            states[e["node"]] = e["new"]
    assert set(states.values()) == {"Up"}
    assert check_invariants(log, scenario, {"succeeded": False, "error": "cancelled", "nodes": []}, SIM_USER) == []


def test_two_runs_against_one_cluster_never_overlap(tmp_path, prefect_home):
    """Two `upgrade` processes started together on one machine (embedded mode: each has its own Prefect server):
    the later one either finds the other in progress and refuses before touching anything (CAU's "a run is
    already in progress"), or, started first, shares the cluster node by node under the lock. Either way one
    node at a time leaves service, nothing is drained twice, and the cluster ends upgraded."""
    options = {"NodeOrder": ["node1", "node2", "node3"], "poll_seconds": 5, "retry_delay_seconds": 0.1}
    with served_cluster(tmp_path, prefect_home, options) as (upgrade, env, events, scenario):
        runs = [subprocess.Popen(upgrade, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 start_new_session=True) for _ in range(2)]
        outputs = [run.communicate(timeout=300)[0] for run in runs]
    outcomes = [json.loads(out) for out in outputs]
    assert any(o["succeeded"] for o in outcomes), outputs
    for run, outcome in zip(runs, outcomes, strict=True):
        assert run.returncode == 0 or outcome["error"].startswith("RunInProgress"), outcome["error"]
    log = read_events(events)
    assert sorted(e["node"] for e in log if e["kind"] == "suspend") == ["node1", "node2", "node3"]
    assert {e["node"] for e in log if e["kind"] == "build"} == {"node1", "node2", "node3"}
    winner = next(o for o in outcomes if o["succeeded"])
    assert check_invariants(log, scenario, winner, SIM_USER) == []


def test_killing_the_cli_leaves_no_process_behind(tmp_path, prefect_home):
    """SIGKILL of `hci-upgrade` alone (not its process group, as an operator or a supervisor does it): Prefect's
    temporary server and anything else it started end too."""
    from flows.reaper import _started, descendants

    options = {"NodeOrder": ["node1", "node2", "node3"], "poll_seconds": 5}
    with served_cluster(tmp_path, prefect_home, options) as (upgrade, env, events, scenario):
        run = subprocess.Popen(upgrade, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_event(events, {"kind": "install", "node": "node1", "status": "Running"})
        children = descendants(run.pid)
        assert children, "the CLI started no process (Prefect's temporary server)"
        run.kill()
        run.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_started(p) == s for p, s in children.items()):
            time.sleep(0.2)
        left = [p for p, s in children.items() if _started(p) == s]
        assert left == [], f"left behind: {left}"


def test_a_run_killed_while_staging_is_finished_by_the_next_one_without_staging_twice(tmp_path, prefect_home):
    nodes = ["node1", "node2", "node3"]
    options = {"NodeOrder": nodes, "poll_seconds": 5, "retry_delay_seconds": 0.1, "PreStage": True}
    with served_cluster(tmp_path, prefect_home, options) as (upgrade, env, events, scenario):
        first = subprocess.Popen(upgrade, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        for node in ("node1", "node2", "node3"):
            wait_for_event(events, {"kind": "install", "node": node, "status": "Running"})
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        second = subprocess.run(upgrade, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        outcome = json.loads(second.stdout)
    log = read_events(events)
    assert [n["result"] for n in outcome["nodes"]] == ["upgraded"] * 3
    started = [e["node"] for e in log if e["kind"] == "install" and e["status"] == "Running"]
    assert sorted(started) == nodes, f"setup started twice: {started}"  # the second run watched the first's
    assert sorted(e["node"] for e in log if e["kind"] == "suspend") == nodes
    assert check_invariants(log, scenario, outcome, SIM_USER) == []
