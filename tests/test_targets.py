"""Today's targets: the catalogue of releases, TargetRelease, and Microsoft's direct path from 22H2 to 24H2 on the
simulated cluster (the source build minimum, NIC drivers, the Cloud Management group, 24H2's post-OS values)."""

from __future__ import annotations

import json
from datetime import date

import pytest
import yaml
from pydantic import ValidationError

from hciupgrade.models import Approval, ClusterInventory, CredentialRef, InputError, RunOptions
from hciupgrade.sim.scenario import make_scenario, parse_scenario
from hciupgrade.targets import RELEASES, support_notes
from tests.test_cli import run_cli

FAST = 5000
DIRECT = {"build": "10.0.20349.3692", "target_build": "10.0.26100.4061", "lcu_build": "10.0.26100.32814"}
CLEANUP = Approval(approver="op", reason="CHG-2505", steps=["cloud-management"])


def direct(nodes: int = 3, **cluster: object):
    """A 22H2 cluster at the direct path's minimum, the 2505 media staged."""
    return make_scenario(nodes=nodes, vms_per_node=2, time_factor=FAST, **{**DIRECT, **cluster})


def with_node(scenario, name: str, **values: object):
    data = scenario.model_dump(mode="json")
    for node in data["cluster"]["nodes"]:
        if node["name"] == name:
            node.update(values)
    return parse_scenario(data)


# --- the catalogue ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RELEASES))
def test_every_value_of_a_release_names_the_page_it_comes_from(name):
    sourced = {field for key in RELEASES[name].sources for field in key.replace(" (", ", ").split(", ")}
    assert {"build", "min_source", "media", "lcu_minimum", "functional_level", "pool_version", "registry",
            "workload_policy", "cau_arguments"} <= sourced


def test_23h2_is_out_of_support_now_and_the_note_names_the_direct_path():
    today = date(2026, 12, 7)
    note = support_notes(RELEASES["23H2"], today)
    assert note and "24H2" in note[0] and "20349.3692" in note[0] and "TargetRelease" in note[0]
    assert support_notes(RELEASES["23H2"], date(2026, 1, 15)) == []
    assert support_notes(RELEASES["24H2"], today) == []


def test_target_release_comes_from_the_inventory_unless_the_options_name_another():
    cluster = ClusterInventory(name="c1", nodes=[{"name": "n1", "address": "127.0.0.1"},
                                                 {"name": "n2", "address": "127.0.0.1"}],
                               credential=CredentialRef(username="u", password_env="P"), target_release="24H2")
    options = RunOptions().check_against(cluster)
    assert options.release.name == "24H2" and options.goal_build == "10.0.26100"
    assert RunOptions(update="cumulative").check_against(cluster).goal_build == "10.0.26100.32814"
    assert RunOptions().goal_build == "10.0.25398" and RunOptions().vm_policy == "shut-down"
    with pytest.raises(InputError, match="TargetRelease: the run options say 23H2, the inventory says 24H2"):
        RunOptions(TargetRelease="23H2").check_against(cluster)
    with pytest.raises(ValidationError, match="TargetRelease"):
        RunOptions(TargetRelease="25H2")


# --- the direct path on the simulated cluster ---------------------------------------------------------------------
def test_the_direct_path_takes_a_20349_3692_cluster_to_26100_after_removing_the_cloud_management_group(run_upgrade):
    run = run_upgrade(direct(), target_release="24H2", approval=CLEANUP)
    assert run.outcome["succeeded"], run.outcome["error"]
    assert {n["build_after"] for n in run.outcome["nodes"]} == {"10.0.26100.4061"}
    assert run.outcome["target"] == "24H2 (10.0.26100.4061)"
    kinds = [e["kind"] for e in run.events]
    assert kinds.count("cluster_group_removed") == 1
    assert kinds.index("cluster_group_removed") < kinds.index("suspend")  # before the first node
    removal = [json.loads(line) for line in run.record.splitlines() if '"cloud-management"' in line]
    assert any(e["status"] == "succeeded" and e["approver"] == "op" and e["reason"] == "CHG-2505" for e in removal)


def test_a_node_below_the_minimum_source_build_is_refused_up_front_naming_the_minimum(run_upgrade):
    run = run_upgrade(with_node(direct(), "node2", build="10.0.20349.2966"), target_release="24H2",
                      approval=CLEANUP)
    assert not run.outcome["succeeded"]
    assert "node2 runs 10.0.20349.2966" in run.outcome["error"] and "20349.3692" in run.outcome["error"]
    assert "cumulative update" in run.outcome["error"]
    assert not any(run.touched(n) for n in ("node1", "node2", "node3"))
    assert not any(e["kind"] == "cluster_group_removed" for e in run.events)


def test_the_cloud_management_group_is_never_removed_without_an_approval(run_upgrade):
    run = run_upgrade(direct(), target_release="24H2")
    assert not run.outcome["succeeded"]
    assert "Cloud Management" in run.outcome["error"] and "--approve cloud-management" in run.outcome["error"]
    assert not any(e["kind"] == "cluster_group_removed" for e in run.events)
    assert not any(run.touched(n) for n in ("node1", "node2", "node3"))


def test_a_nic_driver_not_newer_than_the_inbox_one_blocks_the_direct_path_with_the_recommended_version(
        run_upgrade):
    scenario = with_node(direct(), "node3", nic_vendor="Mellanox", nic_driver="24.4.26429.0")
    run = run_upgrade(scenario, target_release="24H2", approval=CLEANUP)
    assert not run.outcome["succeeded"]
    assert "node3" in run.outcome["error"] and "25.4.50020" in run.outcome["error"]
    assert not any(run.touched(n) for n in ("node1", "node2", "node3"))


def test_the_23h2_path_does_not_ask_for_the_24h2_prerequisites(run_upgrade):
    scenario = with_node(make_scenario(nodes=2, vms_per_node=1, time_factor=FAST), "node1", nic_driver="1.0.0.0")
    run = run_upgrade(scenario)
    assert run.outcome["succeeded"] and run.outcome["target"] == "23H2 (10.0.25398.1486)"
    assert not any(e["kind"] == "cluster_group_removed" for e in run.events)


def test_upgrade_refuses_an_unknown_approval_and_one_without_a_reason(tmp_path, monkeypatch):
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({"clusters": [{
        "name": "c1", "credential": {"username": "u", "password_env": "HCI_TEST_PW"},
        "nodes": [{"name": "n1", "address": "127.0.0.1"}, {"name": "n2", "address": "127.0.0.1"}]}]}))
    monkeypatch.setenv("HCI_TEST_PW", "x")
    done = run_cli("upgrade", "--inventory", str(inventory), "--approve", "functional-level", "--reason", "r",
                   tmp=tmp_path)
    assert done.returncode == 2 and "cloud-management" in done.stderr
    done = run_cli("upgrade", "--inventory", str(inventory), "--approve", "cloud-management", tmp=tmp_path)
    assert done.returncode == 2 and "--reason" in done.stderr


def test_demo_knows_the_24h2_scenario_by_name():
    from cli.simulate import pick_scenario

    scenario = pick_scenario("24h2")
    assert scenario.cluster.target_release == "24H2" and scenario.cluster.build == "10.0.20349.3692"
    assert pick_scenario(None).cluster.target_release == "23H2"


def test_demo_runs_the_whole_24h2_path_and_stops_before_the_undocumented_solution_upgrade(tmp_path):
    scenario = direct(nodes=2, name="hci-24h2")
    data = scenario.model_dump(mode="json")
    data["knobs"]["second_hop"] = "allowed"
    path = tmp_path / "24h2.yaml"
    path.write_text(yaml.safe_dump(data))
    done = run_cli("demo", "--scenario", str(path), "--full", tmp=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "to 24H2 (10.0.26100.4061)" in out
    assert "10.0.26100.32814" in out  # the cumulative update to the checker's 24H2 minimum
    assert "Stopping before the solution upgrade" in out and "install-solution-upgrade.md" in out
    run_id = out.split("Run record: ")[1].split()[0]
    report = run_cli("report", run_id, tmp=tmp_path)
    assert report.returncode == 0 and "on hci-24h2 to 24H2" in report.stdout


def test_vms_a_crashed_run_left_off_after_the_resume_are_started_by_the_next_run():
    """A run shut node1's VMs down, upgraded and resumed it, and died before starting them: the next run finds
    node1 done, and starts the VMs its list on the node still names."""
    from tests.test_safety import cluster, engine

    sim = cluster(nodes=2, build="10.0.25398.1486")  # every node on the target already
    held = sim.stop_workloads("node1", by="a dead run")
    assert held and not any(sim.vms[v].running for v in held)
    outcome, _ = engine(sim).run()
    assert outcome.succeeded and {n.result for n in outcome.nodes} == {"skipped"}
    assert all(sim.vms[v].running for v in held) and sim.nodes["node1"].workloads_held == []
