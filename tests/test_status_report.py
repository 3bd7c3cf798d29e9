"""`hci-upgrade status` and `report` read the run records, like Get-CauRun and Get-CauReport."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.app import app
from hciupgrade.models import RunOptions
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.scenario import make_scenario
from tests.test_properties import engine_for


def test_status_and_report_of_a_finished_and_a_stopped_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    scenario = make_scenario(nodes=3, time_factor=20000,
                             faults=[{"node": "node2", "kind": "install_fails", "times": 1}])
    options = RunOptions(poll_seconds=30, target_build=scenario.cluster.target_build,
                         node_order=["node1", "node2", "node3"])
    outcome, _ = engine_for(SimCluster(scenario), options, None).run()
    runner = CliRunner()
    status = runner.invoke(app, ["status", "hci-demo"], terminal_width=200)
    assert status.exit_code == 0
    assert "RunNotInProgress" in status.output and outcome.run_id in status.output
    report = runner.invoke(app, ["report"], terminal_width=200)
    assert report.exit_code == 0
    lines = {line.split()[0]: line for line in report.output.splitlines() if line.strip().startswith("node")}
    builds = scenario.cluster.build.removeprefix("10.0."), scenario.cluster.target_build.removeprefix("10.0.")
    assert lines["node2"].split()[1:5] == [*builds, "upgraded", "2"]  # before, after, result, two attempts
    start, end = lines["node2"].split()[5:7]
    assert len(start) == len(end) == 8 and start <= end  # HH:MM:SS, UTC
    header = report.output.splitlines()[0]
    assert outcome.run_id in header and "started" in header and "ended" in header and "succeeded" in header
    # a run whose process died, written by an earlier version (a JSON Lines file): imported, no end, no process
    record = tmp_path / "records" / "20260101T000000-dead00.jsonl"
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"run_id": "20260101T000000-dead00", "cluster": "hci-demo", "node": None,
                                  "phase": "run", "status": "running", "start": "2030-01-01T00:00:00+00:00",
                                  "end": None, "error": None, "time_factor": 1, "pid": 999999}) + "\n" +
                      json.dumps({"run_id": "20260101T000000-dead00", "cluster": "hci-demo", "node": "node1",
                                  "phase": "drain", "status": "running", "start": "2030-01-01T00:00:01+00:00",
                                  "end": None, "error": None, "time_factor": 1}) + "\n")
    from hciupgrade.records.store import import_legacy, open_store

    import_legacy(open_store())
    stopped = runner.invoke(app, ["status", "hci-demo"], terminal_width=200)
    assert "RunStopped" in stopped.output and "drain" in stopped.output
    missing = runner.invoke(app, ["report", "no-such-run"])
    assert missing.exit_code == 2


def test_status_calls_a_step_past_its_budget_stalled():
    """A run whose heartbeat lives but whose step does not move: past the step's timeout (install: 240 min) it is
    named as stalled, with how long it has run."""
    import pandas as pd

    from hciupgrade.records.reports import stalled_step

    now = pd.Timestamp("2026-12-07T12:00:00Z")

    def events(started: str) -> pd.DataFrame:
        return pd.DataFrame([
            {"node": None, "phase": "run", "status": "running", "start": "2026-12-07T05:00:00+00:00",
             "time_factor": 1.0, "options": {"MaxRetriesPerNode": 2}},
            {"node": "n1", "phase": "install", "status": "running", "start": started, "time_factor": 1.0,
             "options": None}])

    assert stalled_step(events("2026-12-07T07:00:00+00:00"), "n1", now) == \
        "n1: install running for 300 min, past its budget of 240 min"
    assert stalled_step(events("2026-12-07T10:00:00+00:00"), "n1", now) is None
