"""The remote layer through the real pypsrp client against the fake WinRM endpoint: values stay data, errors
arrive typed, transport failures map onto the small exception set, and a node is reconnected after a reboot."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from hciupgrade.remote import (
    SWITCH,
    AuthFailed,
    Cmdlet,
    CmdletFailed,
    NodeSession,
    NodeUnreachable,
    PackagedScript,
)
from hciupgrade.sim.harness import SIM_USER, SimHarness
from hciupgrade.sim.scenario import make_scenario


@pytest.fixture
def cluster():
    with SimHarness(make_scenario(nodes=3, time_factor=1000)) as harness:
        yield harness


def session(harness: SimHarness, node: str = "node1", password: str | None = None) -> NodeSession:
    inventory = harness.inventory().clusters[0]
    return NodeSession(inventory.node(node), inventory.transport, SIM_USER, SecretStr(password or harness.password))


def test_objects_arrive_as_plain_data_with_enum_names(cluster):
    nodes = session(cluster).run(Cmdlet("Get-ClusterNode")).objects
    assert [n["Name"] for n in nodes] == ["node1", "node2", "node3"]
    assert nodes[0]["State"] == "Up" and nodes[0]["DrainStatus"] == "NotInitiated"
    assert nodes[0]["BuildNumber"] == 20349
    disk = session(cluster).run(Cmdlet("Get-VirtualDisk")).objects[0]
    assert disk["HealthStatus"] == "Healthy" and disk["OperationalStatus"] == ["OK"]


def test_a_hostile_node_name_stays_a_string(cluster):
    result = session(cluster).run(Cmdlet("Get-ClusterNode", {"Name": ["node1", "node2'; Stop-Computer; '"]}))
    assert [n["Name"] for n in result.objects] == ["node1"]
    assert len(result.errors) == 1 and not result.errors[0].terminating
    assert result.errors[0].fq_error_id.startswith("ClusterObjectNotFound")
    assert "node2'; Stop-Computer; '" in result.errors[0].message
    assert all(n.state.name == "Up" for n in cluster.sim.nodes.values())


def test_calls_refuse_what_is_not_data():
    with pytest.raises(ValueError):
        Cmdlet("Get-ClusterNode; Stop-Computer")
    with pytest.raises(ValueError):
        Cmdlet("Get-ClusterNode", {"Name": None})
    with pytest.raises(ValueError):
        Cmdlet("Get-ClusterNode", {"Na me": "x"})
    with pytest.raises(ValueError):
        PackagedScript("../../evil.ps1")


def test_a_terminating_error_carries_its_id_and_win32_code(cluster):
    s = session(cluster)
    s.run(Cmdlet("Suspend-ClusterNode", {"Name": "node1", "Drain": SWITCH}))
    with pytest.raises(CmdletFailed) as caught:
        s.run(Cmdlet("Suspend-ClusterNode", {"Name": "node2", "Drain": SWITCH}))
    error = caught.value.errors[0]
    assert error.terminating and error.win32_code == 5987
    assert error.fq_error_id == "Suspend-ClusterNode,Microsoft.FailoverClusters.PowerShell.SuspendClusterNodeCommand"
    assert "degraded" in error.message


def test_an_unknown_parameter_fails_like_powershell(cluster):
    with pytest.raises(CmdletFailed) as caught:
        session(cluster).run(Cmdlet("Suspend-ClusterNode", {"Node": "node1"}))  # the docs' typo: -Node
    assert caught.value.errors[0].fq_error_id.startswith("NamedParameterNotFound")


def test_wrong_credentials_fail_without_showing_the_password(cluster):
    with pytest.raises(AuthFailed) as caught:
        session(cluster, password="not-the-password-123").run(Cmdlet("Get-ClusterNode"))
    assert "not-the-password-123" not in str(caught.value)
    assert cluster.password not in str(caught.value)


def test_a_rebooting_node_is_unreachable_then_reconnected(cluster):
    s = session(cluster, "node2")
    s.run(Cmdlet("Get-ClusterNode"))  # the pool is open now
    try:
        s.run(Cmdlet("Restart-Computer", {"Force": SWITCH}))
    except NodeUnreachable:
        pass  # the node may go down before its answer leaves: that is the restart working
    with pytest.raises(NodeUnreachable):
        for _ in range(200):
            s.run(Cmdlet("Get-ItemProperty", {"Path": r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"}))
    cluster.sim.clock.advance(cluster.scenario.durations.reboot_minutes * 60 + 1)
    for _ in range(200):
        try:
            obj = s.run(Cmdlet("Get-ItemProperty", {"Path": r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"}))
            break
        except NodeUnreachable:
            pass
    assert obj.objects[0]["CurrentBuildNumber"] == "20349"


def test_a_closed_port_is_unreachable(cluster):
    cluster.endpoints["node3"].stop()
    cluster.sim.nodes["node3"].winrm_up = False
    with pytest.raises(NodeUnreachable):
        session(cluster, "node3").run(Cmdlet("Get-ClusterNode"))


def test_a_hung_node_times_out_at_the_call_deadline_and_the_session_recovers(cluster):
    import time

    from hciupgrade.remote import CallTimedOut

    inventory = cluster.inventory().clusters[0]
    transport = inventory.transport.model_copy(update={"operation_timeout": 1, "read_timeout": 2})
    s = NodeSession(inventory.node("node1"), transport, SIM_USER, SecretStr(cluster.password))
    s.run(Cmdlet("Get-ClusterNode"))
    cluster.endpoints["node1"].hung.set()
    started = time.monotonic()
    with pytest.raises(NodeUnreachable) as caught:  # CallTimedOut, or a read timeout: both say "may come back"
        s.run(Cmdlet("Get-ClusterNode"), timeout=3)
    assert time.monotonic() - started < 30
    assert isinstance(caught.value, CallTimedOut | NodeUnreachable)
    cluster.endpoints["node1"].hung.clear()
    assert s.run(Cmdlet("Get-ClusterNode")).objects
