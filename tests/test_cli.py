"""The `hci-upgrade demo` command as a user runs it: exit codes, --json, --events, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from hciupgrade.sim.scenario import make_scenario

CLI = [sys.executable, "-c", "from cli.app import app; app()"]


def run_cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "HCI_UPGRADE_HOME": str(tmp / "home")}
    env.pop("PREFECT_API_URL", None)  # the command runs Prefect in embedded mode, as on a laptop
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def test_demo_json_names_the_failed_node_and_exits_non_zero(tmp_path):
    scenario = make_scenario(nodes=2, time_factor=5000, faults=[{"node": "node2", "kind": "install_fails"}])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    events = tmp_path / "events.jsonl"
    done = run_cli("demo", "--scenario", str(path), "--json", "--events", str(events), tmp=tmp_path)
    assert done.returncode == 1, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["succeeded"] is False
    by_node = {n["node"]: n for n in outcome["nodes"]}
    assert by_node["node2"]["result"] == "failed" and "0xc1900101" in by_node["node2"]["error"]
    assert by_node["node1"]["build_after"] == "10.0.25398.1486"
    kinds = {json.loads(line)["kind"] for line in events.read_text().splitlines()}
    assert {"suspend", "install", "restart", "resume"} <= kinds


def test_a_bad_scenario_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cluster:\n  nodes: [{name: a}, {name: b}]\n  volumes: [{name: v}]\ntime_factor: -3\n")
    done = run_cli("demo", "--scenario", str(path), tmp=tmp_path)
    assert done.returncode == 2
    assert "time_factor" in done.stderr and "-3" in done.stderr
    assert not (tmp_path / "home" / "records").exists() or not any((tmp_path / "home" / "records").iterdir())
