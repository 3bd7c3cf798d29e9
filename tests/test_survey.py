"""`hci-upgrade survey`: every node read through sessions that can only read (the real client over the fake WinRM
endpoints), each answer the tool depends on checked, each condition of a real cluster flagged with its fix, nothing
changed on the cluster; a twin that rehearses to the cluster's own result; raw answers a parse test can replay."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from hciupgrade.cluster import ClusterClient, NodeInfo
from hciupgrade.models import RunOptions, load_inventory
from hciupgrade.psenums import VMState, parse
from hciupgrade.remote import Cmdlet, PackagedScript
from hciupgrade.remote.readonly import NotReadOnly, ReadOnlySession
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.harness import SimHarness
from hciupgrade.sim.scenario import make_scenario, parse_scenario
from tests.conftest import CLI
from tests.test_safety import engine

CHANGES = {"suspend", "drain", "restart", "install", "task_registered", "resume", "mark", "fence", "csv", "cluster",
           "service", "vm", "registry", "functional_level", "pool_version"}


def harsh_scenario(**knobs):
    """A cluster as a real one answers at first contact: no second hop, the pool's version as text, German display
    names, a saved VM, a node whose Remote Shutdown rules are off and one with a restart pending."""
    data = make_scenario(nodes=3, vms_per_node=1, time_factor=1000, knobs={
        "display_language": "de-DE", **knobs}).model_dump(mode="json")
    data["cluster"]["vms"].append({"name": "saved01", "owner": "node3", "state": "Saved", "memory_gb": 8})
    data["cluster"]["nodes"][1].update({"remote_shutdown_rule": False})
    data["cluster"]["nodes"][2].update({"reboot_pending": True, "reboot_pending_source": "windows-update"})
    return parse_scenario(data)


def read_only_client(harness: SimHarness, tmp_path) -> ClusterClient:
    from hciupgrade.survey import read_only

    inventory = tmp_path / "inv.yaml"
    harness.inventory().write(inventory)
    os.environ.update(harness.environment())
    target = load_inventory(inventory).cluster(None)
    return read_only(ClusterClient(target, target.credential.resolve(secret_block=lambda n: "")))


def test_the_survey_flags_each_condition_with_its_fix_and_changes_nothing(tmp_path):
    from hciupgrade.survey import survey

    with SimHarness(harsh_scenario()) as harness:
        client = read_only_client(harness, tmp_path)
        seq = len(harness.sim.events)
        found = survey(client, RunOptions(target_build=harness.sim.target_build))
        client.close()
        changed = [e for e in harness.sim.events[seq:] if e["kind"] in CHANGES]
    assert changed == []  # the event log shows no change made to the cluster
    verdicts = {f.check: f for f in found.findings}
    assert verdicts["second hop"].verdict == "warning" and "credssp" in verdicts["second hop"].fix
    assert verdicts["Remote Shutdown firewall rules enabled"].verdict == "blocking"
    assert "node2" in verdicts["Remote Shutdown firewall rules enabled"].observed
    assert verdicts["no restart pending"].verdict == "blocking" and "node3" in verdicts["no restart pending"].observed
    assert verdicts["VM states"].verdict == "warning" and "saved01 is Saved" in verdicts["VM states"].observed
    pool = verdicts["storage pool version"]
    assert pool.verdict == "ok" and "Windows Server" in pool.observed and "the CIM number is 27" in pool.observed
    assert verdicts["display language"].observed.startswith("the Remote Shutdown group reads 'Herunterfahren")
    assert all(verdicts[f"node{i}: WinRM and authentication"].verdict == "ok" for i in (1, 2, 3))
    assert found.blocking
    assert found.scenario["knobs"] == {"pool_version_form": "text", "witness": "Cloud Witness",
                                       "storage_replica": False, "second_hop": "denied",
                                       "display_language": "de-DE"}


def test_an_unreachable_node_is_reported_blocking_and_the_others_are_surveyed(tmp_path):
    from hciupgrade.survey import survey

    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=1000,
                             faults=[{"node": "node2", "kind": "winrm_refused"}])
    with SimHarness(scenario) as harness:
        client = read_only_client(harness, tmp_path)
        found = survey(client, RunOptions(target_build=harness.sim.target_build))
        client.close()
    verdicts = {f.check: f for f in found.findings}
    assert verdicts["node2: WinRM and authentication"].verdict == "blocking"
    assert "winrm quickconfig" in verdicts["node2: WinRM and authentication"].fix
    assert verdicts["node1: setup media"].verdict == "ok" and "node2: setup media" not in verdicts


def test_a_read_only_session_refuses_anything_but_a_read_before_it_is_sent():
    sim = SimCluster(make_scenario(nodes=2, vms_per_node=1, time_factor=1000))
    inner = engine(sim).client.session("node1")
    session = ReadOnlySession(inner)
    seq = len(sim.events)
    for call in (Cmdlet("Stop-VM", {"Name": "vm-node1-1"}), Cmdlet("Restart-Computer"),
                 Cmdlet("Get-ClusterNode") | Cmdlet("Suspend-ClusterNode"),
                 PackagedScript("Suspend-NodeForUpgrade.ps1", {"Name": "node1", "RunId": "r", "Fence": 1}),
                 Cmdlet("Get-ItemProperty", {"Path": "HKLM:\\SOFTWARE", "WhatIf": True})):
        with pytest.raises(NotReadOnly):
            session.run(call)
    assert sim.events[seq:] == [] and session.answers == []
    assert session.run(Cmdlet("Get-ClusterNode")).objects and len(session.answers) == 1


def test_the_cli_writes_the_survey_the_twin_and_the_raw_answers_without_the_secret(tmp_path):
    with SimHarness(harsh_scenario()) as harness:
        inventory = tmp_path / "inv.yaml"
        harness.inventory().write(inventory)
        env = {**os.environ, **harness.environment()}
        done = subprocess.run([*CLI, "survey", "--inventory", str(inventory), "--out", str(tmp_path / "s"),
                               "--json"], env=env, capture_output=True, text=True, timeout=300)
        password = harness.password
    assert done.returncode == 1, done.stderr[-2000:]  # something blocks
    report = json.loads((tmp_path / "s" / "survey.json").read_text())
    assert report["cluster"] == "hci-demo" and json.loads(done.stdout) == report
    assert set(report["findings"][0]) == {"check", "verdict", "expected", "observed", "fix"}
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            assert password not in path.read_text()
    twin = parse_scenario(yaml.safe_load((tmp_path / "s" / "twin.yaml").read_text()))
    assert [n.name for n in twin.cluster.nodes] == ["node1", "node2", "node3"]
    assert {v.name: v.state for v in twin.cluster.vms}["saved01"] == "Saved"
    assert twin.knobs.second_hop == "denied" and twin.knobs.display_language == "de-DE"
    assert len(twin.cluster.volumes) == 3 and twin.cluster.volumes[0].size_gb == 2048


def test_the_raw_answers_replay_through_the_clients_parsers(tmp_path):
    """What a node answered, kept by the survey, read again by the parsers the upgrade uses: a real cluster's
    answers can be replayed this way once captured."""
    from hciupgrade.survey import survey

    knobs = {"enum_forms": {"NodeState": "string", "DrainStatus": "integer"}}
    with SimHarness(harsh_scenario(**knobs)) as harness:
        client = read_only_client(harness, tmp_path)
        found = survey(client, RunOptions(target_build=harness.sim.target_build))
        client.close()
    answers = json.loads(json.dumps(found.answers, default=str))  # as written to raw/<node>.json
    nodes = [o for a in answers["node1"] if a["call"] == "Get-ClusterNode" for o in a["objects"]]
    assert {NodeInfo.parse(o).state.name for o in nodes} == {"Up"}
    vms = [o for node in answers.values() for a in node if a["call"] == "Get-VM" for o in a["objects"]]
    assert {parse(VMState, o["State"]).name for o in vms} == {"Running", "Saved"}


def test_the_twin_rehearses_to_the_same_result_as_the_cluster_it_came_from(tmp_path):
    from hciupgrade.survey import survey

    original = make_scenario(nodes=3, vms_per_node=2, time_factor=20000)
    with SimHarness(original) as harness:
        client = read_only_client(harness, tmp_path)
        found = survey(client, RunOptions(target_build=harness.sim.target_build))
        client.close()
    twin = parse_scenario({**found.scenario, "time_factor": 20000})
    results = []
    for scenario in (original, twin):
        outcome, _ = engine(SimCluster(scenario), node_order=["node1", "node2", "node3"]).run()
        results.append((outcome.succeeded, [(n.node, n.result, n.build_after) for n in outcome.nodes]))
    assert results[0] == results[1] and results[0][0]


def test_the_azure_side_is_read_and_its_gaps_are_findings(tmp_path):
    from hciupgrade.sim.arm import ArmFaults, FakeArm
    from hciupgrade.survey import read_only, survey
    from tests.test_solution import TOKEN, cluster_on

    sim = SimCluster(make_scenario(nodes=2, vms_per_node=1, time_factor=1000, name="hci-demo"))
    with FakeArm(token=TOKEN, time_factor=5000) as arm:
        azure = cluster_on(arm, ArmFaults(old_extension=True))
        found = survey(read_only(engine(sim).client), RunOptions(target_build=sim.target_build), azure)
        written = [e for e in arm.clusters["hci-demo"].events if e["kind"] != "cluster"]
    verdicts = {f.check: f for f in found.findings}
    assert verdicts["Azure: LCM extension node2"].verdict == "blocking"
    assert "30.2405.0.32 < 30.2408.0.537" in verdicts["Azure: LCM extension node2"].observed
    assert verdicts["Azure: cluster resource"].verdict == "ok" and "Azure: readiness" not in verdicts
    assert written == []  # read, never written
