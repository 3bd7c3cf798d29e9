"""Readiness: every shape of real checker records is read (or reported with its source), the real decision rule
decides, the simulated checker fails exactly what the cluster's state says, and remediation fixes what can be
fixed remotely, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hciupgrade.readiness.collect import run_checker
from hciupgrade.readiness.remediation import pool_space, remediate, set_registry
from hciupgrade.readiness.results import read_file
from hciupgrade.readiness.summary import FrameBuilder, decide, exit_code, failures, fleet, nodes_by_check
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.inprocess import client_for
from hciupgrade.sim.scenario import make_scenario, parse_scenario

DATA = Path(__file__).parent / "data"


def frame(rows, cluster="c1"):
    builder = FrameBuilder()
    builder.extend(rows, cluster)
    return builder.frame()


def test_string_enums_raw_line_breaks_and_date_ms():
    rows, problems = read_file(DATA / "a1_string_enums.json")
    assert problems == []
    (row,) = rows
    assert (row["status"], row["severity"]) == ("FAILURE", "CRITICAL")
    assert row["timestamp"].isoformat() == "2025-05-12T20:03:22.442000+00:00"
    assert "Passed: Storage adapter [ storage1 ]" in row["detail"]


def test_a_record_inside_an_ece_exception_with_numeric_enums():
    rows, problems = read_file(DATA / "a3_ece_exception.txt")
    assert problems == [] and rows[0]["name"] == "AzStackHci_MOCStack_Network_Port"
    assert (rows[0]["status"], rows[0]["severity"], rows[0]["node"]) == ("FAILURE", "CRITICAL", "AZLNODE01")


def test_per_node_and_aggregated_records_and_a_broken_one_reported_with_its_source():
    rows, problems = read_file(DATA / "mixed_per_node_and_aggregated.json")
    assert [r["name"] for r in rows] == [
        "AzStackHci_Upgrade_ClusterNodeUp", "AzStackHci_Upgrade_BitlockerSuspension", "AzStackHci_Upgrade_TPMHealth",
        "AzStackHci_Upgrade_AlreadyDeployedEnvironment"]
    assert rows[0]["timestamp"].year == 2026 and rows[1]["aggregated"] and not rows[0]["aggregated"]
    assert rows[2]["severity"] == "WARNING" and rows[3]["severity"] == "INFORMATIONAL"
    (problem,) = problems
    assert "record 4 (AzStackHci_Upgrade_Broken)" in str(problem) and "'MAYBE'" in str(problem)
    assert "mixed_per_node_and_aggregated.json" in problem.source


def test_a_file_that_is_not_json_is_a_problem_not_a_silence(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("<html>not json</html>")
    rows, problems = read_file(path)
    assert rows == [] and "not JSON" in problems[0].reason


def test_the_decision_rule_critical_blocks_warning_advises_informational_never():
    rows, _ = read_file(DATA / "mixed_per_node_and_aggregated.json")
    df = frame(rows)
    decision = decide(df).loc["c1"]
    assert not decision.ready and decision.blocking_checks == 2 and decision.advised_checks == 1
    only_soft = frame([r for r in rows if r["severity"] != "CRITICAL"])
    assert decide(only_soft).loc["c1"].ready and exit_code(only_soft) == 0 and exit_code(df) == 1


def readiness_scenario(**readiness):
    data = make_scenario(nodes=3, time_factor=1000, build="10.0.25398.1913", functional_level=12,
                         pool_version=29).model_dump()
    data["readiness"] = readiness
    return parse_scenario(data)


def test_a_ready_cluster_passes_every_check():
    client = client_for(SimCluster(readiness_scenario()))
    rows, problems = run_checker(client)
    assert problems == [] and rows
    assert [r for r in rows if r["status"] != "SUCCESS"] == []


@pytest.mark.parametrize("module", ["aggregated", "per-node"])
def test_the_simulated_checker_fails_what_the_state_says(module):
    scenario = readiness_scenario(module=module, infrastructure_volume=True, nodes={
        "node1": {"bitlocker_protection": "On", "language": "de-DE"},
        "node2": {"missing_features": ["NetworkATC", "GPMC"], "tpm_ready": False}})
    rows, problems = run_checker(client_for(SimCluster(scenario)))
    assert problems == []
    df = frame(rows)
    failed = failures(df)
    names = set(failed["name"])
    bitlocker = "AzStackHci_Upgrade_BitlockerSuspension"
    assert bitlocker in names
    storage = "AzStackHci_Upgrade_Test_Storage_Volume" if module == "per-node" else "AzStackHci_Upgrade_Storage"
    assert {storage, "AzStackHci_Upgrade_Language"} <= names
    assert all(failed["aggregated"] if module == "aggregated" else True) if "aggregated" in failed else True
    assert failed.loc[failed["name"] == bitlocker, "node"].tolist() == ["node1"]
    tpm = failed[failed["name"].str.contains("Tpm|TPM")]
    assert set(tpm["severity"]) == {"WARNING"} and set(tpm["node"]) == {"node2"}
    assert not decide(df).loc["c1"].ready
    grid = nodes_by_check(df, "c1")
    assert set(grid.columns) >= {"node1", "node2", "node3"}


def test_remediation_fixes_what_it_can_and_is_idempotent():
    scenario = readiness_scenario(nodes={"node1": {"bitlocker_protection": "On"},
                                         "node2": {"missing_features": ["NetworkATC", "GPMC"]}})
    sim = SimCluster(scenario)
    client = client_for(sim)
    rows, _ = run_checker(client)
    failed = [r for r in rows if r["status"] != "SUCCESS"]
    done = remediate(client, failed, {"features", "bitlocker", "network-atc", "registry"})
    assert {(d.node, d.step) for d in done if d.changed} >= {("node1", "bitlocker"), ("node2", "features"),
                                                              ("node2", "network-atc")}
    rows, _ = run_checker(client)
    assert [r["name"] for r in rows if r["status"] != "SUCCESS"] == []
    again = remediate(client, [], {"bitlocker", "registry"})
    assert not any(d.changed for d in again if d.step == "bitlocker")
    assert sum(1 for e in sim.events if e["kind"] == "bitlocker") == 1


def test_the_registry_step_keeps_existing_keys():
    sim = SimCluster(readiness_scenario())
    client = client_for(sim)
    set_registry(client, "node1")
    set_registry(client, "node1")  # the key exists now: Test-Path keeps New-Item from running again
    created = [e for e in sim.events if e["kind"] == "registry" and e.get("created")]
    assert len(created) == 1


def test_pool_space_guidance_gives_the_numbers():
    text = pool_space(client_for(SimCluster(readiness_scenario())))
    assert "GB raw free" in text and "768 GB needed" in text


def test_the_fleet_view_ranks_checks_by_clusters_blocked():
    rows, _ = read_file(DATA / "mixed_per_node_and_aggregated.json")
    builder = FrameBuilder()
    builder.extend(rows, "a")
    builder.extend(rows[:1], "b")
    clusters, blocking = fleet(builder.frame())
    assert blocking.iloc[0]["name"] == "AzStackHci_Upgrade_ClusterNodeUp" and blocking.iloc[0]["clusters_blocked"] == 2


CLI = [sys.executable, "-c", "from cli.app import app; app()"]


def test_the_cli_exit_codes_and_files(tmp_path):
    env = {**os.environ, "HCI_UPGRADE_HOME": str(tmp_path)}
    blocked = subprocess.run([*CLI, "readiness", "--results", str(DATA / "a1_string_enums.json"), "--out",
                              str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert blocked.returncode == 1 and "CRITICAL" in blocked.stdout
    assert (tmp_path / "out" / "readiness.csv").exists() and (tmp_path / "out" / "readiness.parquet").exists()
    unreadable = subprocess.run([*CLI, "readiness", "--results", str(tmp_path / "missing.json")],
                                capture_output=True, text=True, env=env)
    assert unreadable.returncode == 2 and "missing.json" in unreadable.stderr
    ok = tmp_path / "ok.json"
    ok.write_text('{"Name": "AzStackHci_Upgrade_X", "Status": 0, "Severity": 2, "Timestamp": "2026-01-01T00:00:00Z"}')
    assert subprocess.run([*CLI, "readiness", "--results", str(ok)], capture_output=True, env=env).returncode == 0


def test_features_that_need_a_restart_are_completed_by_a_rolling_restart(tmp_path, monkeypatch):
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.audit import check_invariants
    from hciupgrade.sim.harness import SIM_USER
    from tests.test_properties import engine_for

    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    data = readiness_scenario(nodes={"node2": {"missing_features": ["FS-VSS-Agent"]}}).model_dump()
    data["time_factor"] = 20000
    scenario = parse_scenario(data)
    sim = SimCluster(scenario)
    client = client_for(sim)
    rows, _ = run_checker(client)
    (step,) = [s for s in remediate(client, [r for r in rows if r["status"] != "SUCCESS"], {"features"})]
    assert step.restart and step.node == "node2"
    rows, _ = run_checker(client)
    assert any(r["status"] != "SUCCESS" for r in rows)  # InstallPending until the node restarts
    options = RunOptions(restart_only=["node2"], poll_seconds=30)
    outcome, _ = engine_for(sim, options, None).run()
    assert outcome.succeeded
    assert [n.result for n in outcome.nodes if n.node == "node2"] == ["restarted"]
    assert [e["node"] for e in sim.events if e["kind"] == "restart"] == ["node2"]
    rows, _ = run_checker(client)
    assert [r["name"] for r in rows if r["status"] != "SUCCESS"] == []
    assert check_invariants(sim.events, scenario, outcome.model_dump(mode="json"), SIM_USER) == []


def test_readiness_on_a_served_cluster_installs_the_module_remediates_and_ends_ready(tmp_path):
    import json

    from tests.conftest import serve_cluster

    scenario = parse_scenario(readiness_scenario(module_installed=False, nodes={
        "node1": {"bitlocker_protection": "On"}, "node3": {"missing_features": ["FS-VSS-Agent"]}}).model_dump())
    extra = {"PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    with serve_cluster(scenario, tmp_path, extra) as (inventory, env, events):
        blocked = subprocess.run([*CLI, "readiness", "--inventory", str(inventory)], capture_output=True,
                                 text=True, env=env, timeout=300)
        fixed = subprocess.run([*CLI, "readiness", "--inventory", str(inventory), "--install-module",
                                "--remediate", "features", "--remediate", "bitlocker", "--out", str(tmp_path / "o")],
                               capture_output=True, text=True, env=env, timeout=300)
    assert blocked.returncode == 2 and "AzStackHci.EnvironmentChecker is not installed" in blocked.stderr
    assert fixed.returncode == 0, fixed.stdout[-2000:] + fixed.stderr[-2000:]
    log = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["node"] for e in log if e["kind"] == "module_installed"} == {"node1", "node2", "node3"}
    assert [e["node"] for e in log if e["kind"] == "restart"] == ["node3"]  # one node, by the rolling engine
    assert any(e["kind"] == "bitlocker" and e["status"] == "Suspended" for e in log)
    assert (tmp_path / "o" / "readiness.parquet").exists()


def test_bitlocker_is_resumed_after_the_upgrade_only_where_it_was_suspended():
    from hciupgrade.readiness.remediation import resume_bitlocker, suspend_bitlocker

    sim = SimCluster(readiness_scenario(nodes={"node1": {"bitlocker_protection": "On"},
                                               "node2": {"bitlocker_protection": "None"}}))
    client = client_for(sim)
    assert suspend_bitlocker(client, "node1").changed
    assert resume_bitlocker(client, "node1").changed and not resume_bitlocker(client, "node2").changed
    assert [e["status"] for e in sim.events if e["kind"] == "bitlocker"] == ["Suspended", "Resumed"]


def test_the_cli_names_each_failing_check_with_its_cause_and_each_cluster_once(tmp_path):
    env = {**os.environ, "HCI_UPGRADE_HOME": str(tmp_path), "COLUMNS": "200"}
    two = [str(DATA / "a1_string_enums.json"), str(DATA / "mixed_per_node_and_aggregated.json")]
    out = subprocess.run([*CLI, "readiness", "--results", two[0], "--results", two[1]], capture_output=True,
                         text=True, env=env).stdout
    assert "Checks per cluster, by severity and status" in out  # a table, not a DataFrame's repr
    lines = out.splitlines()
    headers = [line for line in lines if line.strip() in ("a1_string_enums", "mixed_per_node_and_aggregated")]
    assert len(headers) == 2  # each cluster's name once, above its findings
    findings = [line for line in lines if line.strip().startswith("CRITICAL")]
    assert findings and all("(AzStackHci_" in line for line in findings)  # the check's own Name beside its title


def test_remediation_and_its_restart_are_flow_steps_never_inside_a_retried_task():
    from flows import readiness as flow

    assert flow.check_cluster.retries == 1  # reads only: a retry repeats nothing that matters
    assert flow.remediate_cluster.retries == 0  # a change: a rerun of the flow does what is still needed
    source = flow.readiness_of.__code__.co_names
    assert "rolling_upgrade" in source and "run_engine" not in source  # the restart is the rolling flow itself
