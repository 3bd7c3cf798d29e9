"""What the first real cluster would have shown: answers in the forms Windows gives them, and the second hop
Windows refuses without delegation. Each case runs against the simulator set the way a real node answers (its
knobs, harsher by default), first showing the form or refusal itself, then that hci-upgrade copes with it. The
sources are named beside each case."""

from __future__ import annotations

from functools import partial

import pytest

from hciupgrade.clock import ClusterClock
from hciupgrade.models import Approval
from hciupgrade.psenums import HealthStatus, NodeState, VMState, parse
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.remote import SWITCH, Cmdlet, CmdletFailed
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.scenario import make_scenario, parse_scenario
from hciupgrade.upgrade.offline import OfflineUpgrade
from hciupgrade.upgrade.postos import PostUpgrade
from tests.test_finish import AFTER_FEATURE_UPDATE, FACTOR
from tests.test_safety import engine

APPROVE_ALL = Approval(approver="test", reason="first contact", steps=["functional-level", "storage-pool"],
                       source="cli")


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))


def cluster(*, build: str | None = None, vms: list | None = None, **knobs) -> SimCluster:
    extra = {"build": build} if build else {}
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FACTOR, knobs=knobs, **extra)
    if vms is not None:
        data = scenario.model_dump(mode="json")
        data["cluster"]["vms"] = vms
        scenario = parse_scenario(data)
    return SimCluster(scenario)


def owned(sim: SimCluster):
    """An engine's client that owns the cluster, as a flow's does under the lock."""
    run = engine(sim)
    recorder = RunRecorder(new_run_id(), sim.name, time_factor=FACTOR)
    run.client.own(recorder.run_id, partial(recorder.store.next_fence, sim.name))
    return run, recorder


# --- the pool's version: Get-StoragePool shows a friendly text (a real `Get-StoragePool | Format-List *` shows
# "Version : Windows Server 2016 RS3"); the number is the CIM property, as the environment checker reads it ---------
@pytest.mark.parametrize("form", ["text", "number"])
def test_the_pool_version_is_read_as_a_number_whatever_form_get_storagepool_shows(form):
    sim = cluster(pool_version_form=form)
    run = engine(sim)
    raw = run.client.query(Cmdlet("Get-StoragePool", {"IsPrimordial": False}))[0]["Version"]
    assert isinstance(raw, str) if form == "text" else raw == sim.pool_version  # int(raw) fails on a real pool
    assert run.client.pool() == (f"S2D on {sim.name}", sim.pool_version)


def test_finish_raises_the_pool_on_a_pool_that_shows_its_version_as_text():
    sim = cluster(build=AFTER_FEATURE_UPDATE, second_hop="allowed", pool_version_form="text")
    for node in sim.nodes.values():
        node.build = sim.lcu_build
    before = sim.pool_version
    run, recorder = owned(sim)
    outcome = PostUpgrade(run.client, run.options, recorder, lambda steps, plan: APPROVE_ALL).run()
    assert outcome.succeeded, outcome.error
    assert before < 28 <= sim.pool_version and outcome.after.pool_version == sim.pool_version


# --- a guest with a locked console: Stop-VM without -Force prompts, and a remote session cannot answer
# (Msvm_ShutdownComponent.InitiateShutdown 32781: "The machine is locked and cannot be shut down without the force
# option") --------------------------------------------------------------------------------------------------------
def locked_cluster() -> SimCluster:
    vms = [{"name": "kiosk01", "owner": "node1", "locked_console": True},
           {"name": "app01", "owner": "node2"}, {"name": "app02", "owner": "node3"}]
    return cluster(vms=vms)


def test_stop_vm_without_force_on_a_locked_guest_asks_and_fails_in_a_remote_session():
    sim = locked_cluster()
    session = engine(sim).client.session("node1")
    with pytest.raises(CmdletFailed) as failed:
        session.run(Cmdlet("Stop-VM", {"Name": "kiosk01", "ErrorAction": "Stop"}))
    assert failed.value.has_error_id("HostFunctionNotImplemented")
    assert sim.vms["kiosk01"].running


def test_the_offline_path_shuts_down_a_locked_guest_and_starts_it_again():
    sim = locked_cluster()
    run, recorder = owned(sim)
    outcome = OfflineUpgrade(run.client, run.options, recorder, ClusterClock(FACTOR)).run()
    assert outcome.succeeded, outcome.error
    assert [e["status"] for e in sim.events if e["kind"] == "vm" and e.get("vm") == "kiosk01"] == ["Off", "Running"]


# --- volumes offline read Detached with an Unknown health: storage is judged once they are online ----------------
def test_the_offline_path_brings_the_volumes_online_before_it_judges_storage():
    sim = cluster()
    run, recorder = owned(sim)
    outcome = OfflineUpgrade(run.client, run.options, recorder, ClusterClock(FACTOR)).run()
    assert outcome.succeeded, outcome.error
    phases = [p for p in outcome.phases if p in ("start-cluster", "volumes-online", "wait-storage", "start-vms")]
    assert phases == ["start-cluster", "volumes-online", "wait-storage", "start-vms"]
    detached = [e for e in sim.events if e["kind"] == "disk_health" and e["operational"] == ["Detached"]]
    assert detached and all(e["health"] == "Unknown" for e in detached)


def test_a_volume_taken_offline_reads_detached_while_the_cluster_runs():
    sim = cluster()
    with sim.lock:
        sim.set_csv("Volume01", False, by="operator")
    assert (sim.disks["Volume01"].health, sim.disks["Volume02"].health) == (HealthStatus.Unknown,
                                                                          HealthStatus.Healthy)


# --- the second hop: Start-Cluster's docs say it cannot be run remotely without CredSSP; Test-Cluster reaches
# every node from the one it runs on --------------------------------------------------------------------------------
def stopped(sim: SimCluster) -> None:
    with sim.lock:
        sim.stop_cluster(by="operator")


def test_start_cluster_in_one_nodes_session_is_refused_on_the_others_without_delegation():
    sim = cluster()
    stopped(sim)
    result = engine(sim).client.session("node1").run(Cmdlet("Start-Cluster", {"Name": "node1"}))
    assert sorted(e.target for e in result.errors) == ["node2", "node3"]
    assert all("Access is denied" in e.message for e in result.errors)
    assert not sim.cluster_running  # node1 and the witness: 2 of 4 votes, no quorum
    assert {n.state for n in sim.nodes.values()} == {NodeState.Down}


def test_the_offline_path_starts_each_nodes_cluster_service_in_its_own_session():
    sim = cluster()  # second hop denied, as a domain without delegation
    run, recorder = owned(sim)
    outcome = OfflineUpgrade(run.client, run.options, recorder, ClusterClock(FACTOR)).run()
    assert outcome.succeeded, outcome.error
    assert sim.cluster_running and {n.state for n in sim.nodes.values()} == {NodeState.Up}
    started = [e["node"] for e in sim.events if e["kind"] == "service" and e.get("status") == "Running"]
    assert sorted(started) == ["node1", "node2", "node3"]


def test_the_second_hop_is_proven_before_anything_irreversible_or_the_post_os_steps_are_refused():
    sim = cluster(build=AFTER_FEATURE_UPDATE)  # second hop denied
    for node in sim.nodes.values():
        node.build = sim.lcu_build
    level, pool = sim.functional_level, sim.pool_version
    run, recorder = owned(sim)
    asked: list = []
    outcome = PostUpgrade(run.client, run.options, recorder, lambda steps, plan: asked.append(steps) or APPROVE_ALL
                          ).run()
    assert not outcome.succeeded and "second hop refused" in outcome.error and "credssp" in outcome.error
    assert (sim.functional_level, sim.pool_version) == (level, pool) and asked == []  # nothing asked, nothing done
    finding = next(f for f in outcome.findings if f["check"] == "second hop for Test-Cluster")
    assert not finding["ok"] and "Access is denied" in finding["detail"]
    assert not any(e["kind"] == "validation" for e in sim.events)


def test_with_delegation_the_second_hop_answers_and_changes_nothing():
    sim = cluster(second_hop="allowed")
    seq = len(sim.events)
    assert engine(sim).client.second_hop() is None
    assert sim.events[seq:] == []
    denied = engine(cluster()).client.second_hop()
    assert denied is not None and denied.startswith("from node1 to node2: [node2] Connecting to remote server")


def test_a_switch_reaches_the_owned_command_as_a_switch():
    sim = cluster()
    run, _ = owned(sim)
    run.client.act_on_cluster("Stop-Cluster", {"Force": SWITCH})
    assert not sim.cluster_running


# --- every state Hyper-V reports: a VM Saved, Paused or in a *Critical state is read, and left as it is -----------
def test_vms_in_any_hyperv_state_are_read_and_only_running_ones_are_shut_down():
    vms = [{"name": "saved01", "owner": "node1", "state": "Saved"},
           {"name": "crit01", "owner": "node2", "state": "RunningCritical"},
           {"name": "fast01", "owner": "node2", "state": "fastsaved"},
           {"name": "app01", "owner": "node3"}]
    sim = cluster(vms=vms)
    run, recorder = owned(sim)
    states = {str(v["Name"]): v["State"] for node in sim.nodes for v in run.client.vms(node)}
    assert {n: parse(VMState, s).name for n, s in states.items()} == {
        "saved01": "Saved", "crit01": "RunningCritical", "fast01": "FastSaved", "app01": "Running"}
    outcome = OfflineUpgrade(run.client, run.options, recorder, ClusterClock(FACTOR)).run()
    assert outcome.succeeded, outcome.error
    touched = {e["vm"] for e in sim.events if e["kind"] == "vm"}
    assert touched == {"app01"}  # the others were not running: not shut down, not started


def test_a_scenario_with_an_unknown_vm_state_is_refused_naming_the_state():
    with pytest.raises(Exception, match="'Sleeping' is not a VMState"):
        cluster(vms=[{"name": "x", "owner": "node1", "state": "Sleeping"}])


# --- a scheduled task just started can still read 0x41303 (SCHED_S_TASK_HAS_NOT_RUN) -------------------------------
def test_a_task_that_has_not_run_yet_is_not_taken_as_finished():
    from hciupgrade.cluster import FEATURE, SCHED_S_TASK_HAS_NOT_RUN

    sim = cluster(task_start_lag_seconds=3600)  # an hour of cluster time: 0.18 s here
    run, _ = owned(sim)
    run.client.register_update("node1", FEATURE, r"C:\SetupFiles\WindowsServer\ExtractedFiles", start=True,
                               marked=False)
    assert run.client.update_result("node1", FEATURE) == SCHED_S_TASK_HAS_NOT_RUN  # the old client read an end
    assert run.steps.install("node1") == 0  # setup's own exit code, once it ran


# --- prerequisites read the way every node answers ----------------------------------------------------------------
def prerequisite_findings(sim: SimCluster) -> dict[str, tuple[bool, str]]:
    from hciupgrade.upgrade.preflight import Preflight, prerequisites

    run = engine(sim)
    pre = Preflight()
    prerequisites(run.client, list(run.client.sessions), pre)
    return {f.check: (f.ok, f.detail) for f in pre.findings}


def with_node(node: dict, **knobs) -> SimCluster:
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FACTOR, knobs=knobs)
    data = scenario.model_dump(mode="json")
    data["cluster"]["nodes"][1].update(node)
    return SimCluster(parse_scenario(data))


def test_the_remote_shutdown_rules_are_found_on_a_german_node_by_their_indirect_group_name():
    german = with_node({}, display_language="de-DE")
    raw = engine(german).client.session("node1").run(Cmdlet("Get-NetFirewallRule", {"DisplayGroup": "Remote Shutdown"}))
    assert raw.objects == []  # the English display name finds nothing: the old check blocked every German node
    assert prerequisite_findings(german)["Remote Shutdown firewall rules enabled"][0]
    closed = prerequisite_findings(with_node({"remote_shutdown_rule": False}, display_language="de-DE"))
    ok, detail = closed["Remote Shutdown firewall rules enabled"]
    assert not ok and "node2" in detail and "@firewallapi.dll,-36751" in detail


@pytest.mark.parametrize("source", ["cbs", "windows-update", "file-rename"])
def test_a_pending_restart_is_found_wherever_windows_records_it(source):
    found = prerequisite_findings(with_node({"reboot_pending": True, "reboot_pending_source": source}))
    ok, detail = found["no restart pending"]
    assert not ok and detail.startswith("node2 wait for a restart")
    assert prerequisite_findings(with_node({}))["no restart pending"][0]


def test_automatic_updates_switched_off_by_no_auto_update_do_not_block():
    assert not prerequisite_findings(with_node({"auto_update": "install"}))[
        "automatic updates do not install on their own"][0]
    assert prerequisite_findings(with_node({"auto_update": "install", "no_auto_update": True}))[
        "automatic updates do not install on their own"][0]


# --- the VM version target is the host's own default, not a guess --------------------------------------------------
def test_vm_versions_are_moved_to_the_hosts_default_as_get_vmhostsupportedversion_says():
    sim = cluster(build=AFTER_FEATURE_UPDATE, second_hop="allowed")
    run = engine(sim)
    assert run.client.default_vm_version() == "12.0"  # each 23H2 host's -Default
    older = cluster()  # 22H2 hosts: their default is the VMs' own version, nothing to update
    assert engine(older).client.default_vm_version() == "10.0"


# --- smaller forms: Get-CauRun's order, Get-SRGroup per server, -WhatIf's output --------------------------------
class Answers:
    """A node session that answers each cmdlet with fixed objects (what a capture of a real node would give)."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers, self.call_seconds = answers, []

    def run(self, call, *, timeout=None):
        from hciupgrade.remote import Result

        objects = self.answers.get(str(call).split(" ")[0], [])
        return Result(objects=objects, types=[("System.Object",)] * len(objects))

    def reset(self, *, graceful: bool = True) -> None:
        pass

    close = reset


def client_with(per_node: dict[str, dict[str, list]]):
    from pydantic import SecretStr

    from hciupgrade.cluster import ClusterClient
    from hciupgrade.models import ClusterInventory, CredentialRef, NodeEndpoint, Transport

    inventory = ClusterInventory(name="hci-x", nodes=[NodeEndpoint(name=n, address="127.0.0.1", port=5985)
                                                      for n in per_node],
                                 transport=Transport(scheme="http", auth="basic"),
                                 credential=CredentialRef(username="u", password_env="UNUSED"))
    return ClusterClient(inventory, SecretStr("x"), sessions={n: Answers(a) for n, a in per_node.items()})


def test_the_cau_run_state_is_found_whatever_the_order_get_caurun_writes_it_in():
    run = {"RunId": "6f1c2a9e", "CurrentOrchestrator": "node1"}
    for objects in ([run, "RunInProgress"], ["RunInProgress", run], [1, run]):
        assert client_with({"node1": {"Get-CauRun": objects}, "node2": {}}).cau_run_state() == "RunInProgress"
    assert client_with({"node1": {"Get-CauRun": ["RunNotInProgress"]}, "node2": {}}).cau_run_state() == \
        "RunNotInProgress"


def test_storage_replica_groups_are_asked_of_every_server():
    group = {"Name": "rg-site-b", "ComputerName": "node2"}
    stretched = client_with({"node1": {"Get-SRGroup": []}, "node2": {"Get-SRGroup": [group]}})
    assert stretched.storage_replica()  # the first node alone lists none: its site has no group of its own


def test_functional_level_whatif_writes_the_cluster_object_and_changes_nothing():
    sim = cluster(build=AFTER_FEATURE_UPDATE)
    for node in sim.nodes.values():
        node.build = sim.lcu_build
    level = sim.functional_level
    answer = engine(sim).client.ask(Cmdlet("Update-ClusterFunctionalLevel", {"WhatIf": SWITCH}))
    assert [o["Name"] for o in answer.objects] == [sim.name] and sim.functional_level == level
