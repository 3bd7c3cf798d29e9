"""PowerShell's error semantics as a real node has them, in the simulator and read by the production code, over
the real pypsrp client and the fake WinRM endpoint: terminating versus non-terminating errors per cmdlet,
-ErrorAction, the real error identities of a node whose cluster service is down, error records shaped like a
recorded real one, and enum values in every wire form a node uses."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from psrpcore.types import serialize
from pydantic import SecretStr
from pypsrp.messages import PipelineState
from pypsrp.serializer import ObjectMeta, Serializer

from hciupgrade.cluster import CURRENT_VERSION_KEY, FEATURE, FEATURE_UPDATE_TASK, HEALTH, ClusterClient
from hciupgrade.ownership import Owner
from hciupgrade.psenums import HealthStatus, JobState, NodeState
from hciupgrade.remote import Cmdlet, CmdletFailed, ErrorInfo, NodeSession
from hciupgrade.remote.session import error_info
from hciupgrade.sim.cmdlets import ErrorOut
from hciupgrade.sim.harness import SIM_USER, SimHarness
from hciupgrade.sim.pstypes import error_record
from hciupgrade.sim.scenario import make_scenario

RECORDED = Path(__file__).parent / "data" / "pypsrp_error_failed_pipeline_state.xml"


def served(**knobs: object) -> SimHarness:
    scenario = make_scenario(nodes=3, time_factor=1000)
    if knobs:
        scenario = scenario.model_copy(update={"knobs": scenario.knobs.model_copy(update=knobs)})
    return SimHarness(scenario)


@pytest.fixture
def cluster():
    with served() as harness:
        yield harness


def session(harness: SimHarness, node: str = "node1") -> NodeSession:
    inventory = harness.inventory().clusters[0]
    return NodeSession(inventory.node(node), inventory.transport, SIM_USER, SecretStr(harness.password))


def client(harness: SimHarness) -> ClusterClient:
    return ClusterClient(harness.inventory().clusters[0], SecretStr(harness.password))


# --- terminating or not, and -ErrorAction ------------------------------------------------------------------------
@pytest.mark.parametrize("cmdlet", ["Get-ScheduledTask", "Start-ScheduledTask", "Stop-ScheduledTask",
                                    "Get-ScheduledTaskInfo"])
def test_a_task_that_does_not_exist_is_a_non_terminating_object_not_found(cluster, cmdlet):
    result = session(cluster).run(Cmdlet(cmdlet, {"TaskName": FEATURE_UPDATE_TASK}))
    assert result.objects == [] and len(result.errors) == 1
    error = result.errors[0]
    assert not error.terminating and error.fq_error_id == f"CmdletizationQuery_NotFound_TaskName,{cmdlet}"
    assert error.category == 13 and error.activity == cmdlet  # ObjectNotFound
    assert error.message == (f"No MSFT_ScheduledTask objects found with property 'TaskName' equal to "
                             f"'{FEATURE_UPDATE_TASK}'.  Verify the value of the property and retry.")


def test_error_action_stop_makes_it_terminating_and_silently_continue_hides_it(cluster):
    with pytest.raises(CmdletFailed) as stopped:
        session(cluster).run(Cmdlet("Get-ScheduledTask", {"TaskName": FEATURE_UPDATE_TASK, "ErrorAction": "Stop"}))
    assert stopped.value.errors[0].terminating
    assert stopped.value.errors[0].error_id == "CmdletizationQuery_NotFound_TaskName"
    for hide in ("SilentlyContinue", "Ignore"):
        result = session(cluster).run(Cmdlet("Get-ScheduledTask", {"TaskName": FEATURE_UPDATE_TASK,
                                                                   "ErrorAction": hide}))
        assert result.objects == [] and result.errors == []


def test_registry_and_service_errors_are_non_terminating(cluster):
    s = session(cluster)
    missing_key = s.run(Cmdlet("Get-ItemProperty", {"Path": r"HKLM:\SOFTWARE\Contoso"}))
    assert missing_key.objects == []
    assert missing_key.errors[0].fq_error_id == "PathNotFound,Microsoft.PowerShell.Commands.GetItemPropertyCommand"
    missing_value = s.run(Cmdlet("Get-ItemProperty", {"Path": r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion",
                                                      "Name": "NoSuchValue"}))
    assert missing_value.objects == [] and missing_value.errors[0].error_id == \
        "System.Management.Automation.PSArgumentException"
    set_missing = s.run(Cmdlet("Set-ItemProperty", {"Path": r"HKLM:\SYSTEM\CurrentControlSet\Services\Vid\Parameters",
                                                    "Name": "SkipSmallLocalAllocations", "Value": 0}))
    assert set_missing.errors[0].fq_error_id == "PathNotFound,Microsoft.PowerShell.Commands.SetItemPropertyCommand"
    service = s.run(Cmdlet("Start-Service", {"Name": "NoSuchService"}))
    assert not service.errors[0].terminating
    assert service.errors[0].fq_error_id == \
        "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.StartServiceCommand"
    assert all(not e.terminating for r in (missing_key, missing_value, set_missing) for e in r.errors)


def test_several_keys_in_one_read_come_back_as_powershell_sends_them(cluster):
    """Get-ItemProperty -Path takes a string[]: an object per key that exists, a PathNotFound error per key that
    does not; the production code reads a node's build and our mark in that one call."""
    s = session(cluster)
    both = s.run(Cmdlet("Get-ItemProperty", {"Path": (CURRENT_VERSION_KEY, r"HKLM:\SOFTWARE\Contoso")}))
    assert [o["PSChildName"] for o in both.objects] == ["CurrentVersion"]
    assert [e.error_id for e in both.errors] == ["PathNotFound"] and not both.errors[0].terminating
    c = client(cluster)
    assert c.build_and_mark("node1") == (c.os_build("node1"), None)
    with cluster.sim.lock:
        cluster.sim.mark_pause("node1", {"PausedByRun": "run-1", "PausedBy": "CORP\\op", "PausedAt": "now"}, by="t")
    build, mark = c.build_and_mark("node1")
    assert build.startswith("10.0.20349.") and mark["PausedByRun"] == "run-1" and mark == c.pause_mark("node1")


def test_the_production_code_reads_a_missing_task_as_missing_not_as_an_index_error(cluster):
    c = client(cluster)
    assert c.update_status("node1", FEATURE) is None
    c.owner = Owner("run-1", 1)  # a change needs an owner; the node needs no mark of it for this read test
    c.register_update("node1", FEATURE, r"C:\SetupFiles\WindowsServer\ExtractedFiles", marked=False)
    state, code = c.update_status("node1", FEATURE)
    assert state.name == "Ready" and code == 0x41303  # SCHED_S_TASK_HAS_NOT_RUN
    with pytest.raises(CmdletFailed, match="the call returned no object|No MSFT_ScheduledTask"):
        c.update_result("node2", FEATURE)  # relies on a terminating failure: -ErrorAction Stop


# --- a node whose cluster service is not running -------------------------------------------------------------------
@pytest.mark.parametrize("kind,detail", [("ClusterEndpointNotRegistered",
                                          "There are no more endpoints available from the endpoint mapper"),
                                         ("ClusterRpcConnection", "The RPC server is unavailable")])
def test_a_node_without_its_cluster_service_answers_with_the_real_error_and_others_answer_for_it(kind, detail):
    with served(cluster_down_error=kind) as harness:
        with harness.sim.lock:
            harness.sim._set_state(harness.sim.nodes["node1"], NodeState.Joining, "system", "test")
        with pytest.raises(CmdletFailed) as failed:
            session(harness).run(Cmdlet("Get-ClusterNode"))
        error = failed.value.errors[0]
        assert error.fq_error_id == f"{kind},Microsoft.FailoverClusters.PowerShell.GetClusterNodeCommand"
        assert error.exception_type == "Microsoft.FailoverClusters.PowerShell.ClusterCmdletException"
        assert error.category == 27  # ErrorCategory.ConnectionError
        assert error.message == ("The cluster service is not running.  Make sure that the service is running on "
                                 f"all nodes in the cluster.\n    {detail}")
        c = client(harness)
        c.sessions = {"node1": c.sessions["node1"], "node2": c.sessions["node2"], "node3": c.sessions["node3"]}
        assert [n.name for n in c.nodes()] == ["node1", "node2", "node3"]  # node2 answered for the cluster
        with pytest.raises(CmdletFailed) as script:  # the health script fails there as Get-ClusterNode does
            session(harness).run(HEALTH)
        assert script.value.has_error_id(kind)
        snapshot = c.snapshot(on="node1")  # asked of node1 (it answers on WinRM); another node answers for it
        assert snapshot.node("node1").state == NodeState.Joining and len(snapshot.disks) > 0
        assert snapshot.pool is not None and snapshot.pool.health == HealthStatus.Healthy


def test_a_degraded_space_is_recognised_from_its_text_as_well_as_its_hresult():
    text = "A clustered space is in a degraded condition and the requested action cannot be completed at this time."
    by_text = CmdletFailed("n1", "Suspend-ClusterNode", [ErrorInfo(text, "Suspend-ClusterNode", terminating=True)])
    by_code = CmdletFailed("n1", "Suspend-ClusterNode", [ErrorInfo("other text", "X", hresult=0x80071763 - 2**32)])
    assert by_text.has_win32(5987) and by_code.has_win32(5987)
    assert not CmdletFailed("n1", "x", [ErrorInfo("the node is down", "X")]).has_win32(5987)


# --- error records shaped like real ones ---------------------------------------------------------------------------
def recorded_failure():
    """The Failed PipelineState a real Windows host sent (jborean93/pypsrp, tests/tests_pypsrp/responses/
    test_psrp_error_failed.yml: `$ErrorActionPreference = 'Stop'; ...; Write-Error error`)."""
    state = Serializer().deserialize(RECORDED.read_text(), ObjectMeta("Obj", object=PipelineState))
    return state.error_record


def test_the_production_parser_reads_a_recorded_real_error_record():
    info = error_info(recorded_failure(), True)
    assert info.message == "error" and info.terminating
    assert info.fq_error_id == "Microsoft.PowerShell.Commands.WriteErrorException"
    assert info.exception_type == "Microsoft.PowerShell.Commands.WriteErrorException"
    assert info.hresult == -2146233087 and info.category == 0 and info.activity == "Write-Error"


def test_the_simulators_error_records_carry_the_fields_of_the_real_one():
    real = ET.fromstring(RECORDED.read_text()).find("MS/Obj[@N='ExceptionAsErrorRecord']")
    ours = serialize(error_record(ErrorOut("The cluster node 'n9' was not found.",
                                           "ClusterObjectNotFound,Microsoft.FailoverClusters.PowerShell."
                                           "GetClusterNodeCommand", "ObjectNotFound", target="n9",
                                           exception_type="Microsoft.FailoverClusters.PowerShell."
                                                          "ClusterCmdletException", activity="Get-ClusterNode")),
                     None)

    def fields(record: ET.Element) -> set[str]:
        return {e.get("N") for e in record.find("MS")}

    assert fields(real) <= fields(ours)
    exception = ours.find("MS/Obj[@N='Exception']")
    chain = [t.text for t in exception.find("TN")]
    assert chain[0].endswith("ClusterCmdletException") and chain[-2:] == ["System.Exception", "System.Object"]
    assert exception.findtext("ToString") == ("Microsoft.FailoverClusters.PowerShell.ClusterCmdletException: The "
                                              "cluster node 'n9' was not found.")
    assert ours.findtext("MS/S[@N='ErrorCategory_Activity']") == "Get-ClusterNode"
    assert ours.findtext("MS/S[@N='ErrorCategory_Message']") == \
        "ObjectNotFound: (n9:String) [Get-ClusterNode], ClusterCmdletException"
    real_info = {e.get("N") for e in real.find("MS/Obj[@N='InvocationInfo']/Props")}
    our_info = {e.get("N") for e in ours.find("MS/Obj[@N='InvocationInfo']/Props")}
    assert real_info <= our_info


# --- enum values in every wire form ------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["enum", "string", "integer"])
def test_enums_are_read_in_every_wire_form(form):
    forms = {name: form for name in ("NodeState", "DrainStatus", "HealthStatus", "JobState", "ScheduledTaskState")}
    with served(enum_forms=forms) as harness:
        raw = session(harness).run(Cmdlet("Get-ClusterNode", {"Name": "node1"})).objects[0]["State"]
        assert raw == {"enum": "Up", "string": "Up", "integer": 0}[form]
        c = client(harness)
        assert {n.state for n in c.nodes()} == {NodeState.Up}
        snapshot = c.snapshot()
        assert {d.health for d in snapshot.disks} == {HealthStatus.Healthy}
        c.owner = Owner("run-1", 1)
        c.register_update("node1", FEATURE, r"C:\SetupFiles\WindowsServer\ExtractedFiles", marked=False)
        assert c.update_status("node1", FEATURE)[0].name == "Ready"
        assert all(isinstance(j.state, JobState) for j in snapshot.jobs)
