"""The transports a real node uses, end to end through pypsrp: Negotiate (NTLM through pyspnego's acceptor) with
WinRM message encryption over HTTP, Negotiate over HTTPS with a certificate from a throwaway CA, and Basic over
loopback HTTP for debugging. Reboots, refusals and timeouts behave the same under each; nothing readable crosses
the wire after authentication."""

from __future__ import annotations

import base64
import http.client
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import spnego
from pydantic import SecretStr

from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import ClusterClient
from hciupgrade.models import NodeEndpoint, RunOptions, Transport
from hciupgrade.records import RunRecorder, new_run_id
from hciupgrade.remote import AuthFailed, CertificateRejected, Cmdlet, NodeSession, NodeUnreachable
from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.harness import SIM_USER, TRANSPORTS, SimHarness
from hciupgrade.sim.scenario import make_scenario
from hciupgrade.sim.tls import ThrowawayCA
from hciupgrade.sim.winrm import FakeWinRM
from hciupgrade.sim.wsauth import Authenticator
from hciupgrade.upgrade.rolling import RollingUpgrade
from hciupgrade.upgrade.steps import Steps

FAST = 20000


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))


def session(harness: SimHarness, node: str = "node1", password: str | None = None,
            endpoint: NodeEndpoint | None = None) -> NodeSession:
    inventory = harness.inventory().clusters[0]
    return NodeSession(endpoint or inventory.node(node), inventory.transport, SIM_USER,
                       SecretStr(password or harness.password))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_rolling_upgrade_with_reboots_refusals_and_reauthentication_under_each_transport(transport):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST,
                             faults=[{"node": "node3", "kind": "winrm_refused"}])
    with SimHarness(scenario, transport=transport) as harness:
        target = harness.inventory().clusters[0]
        client = ClusterClient(target, SecretStr(harness.password))
        options = RunOptions(poll_seconds=30, target_build=scenario.cluster.target_build, NodeOrder=["node1", "node2",
                                                                                                     "node3"])
        engine = RollingUpgrade(client, options, RunRecorder(new_run_id(), target.name, time_factor=FAST),
                                Steps(client, options, ClusterClock(FAST)))
        try:
            outcome, _ = engine.run()
        finally:
            client.close()
        events = harness.events()
    results = {n.node: n.result for n in outcome.nodes}
    assert results == {"node1": "upgraded", "node2": "upgraded", "node3": "not-started"}  # refused WinRM: named
    assert "node3" in outcome.error and "not reachable" in outcome.error
    assert sum(1 for e in events if e["kind"] == "restart") == 2  # each node re-authenticated after its reboot
    assert check_invariants(events, scenario, outcome.model_dump(mode="json"), SIM_USER) == []


@pytest.mark.parametrize("transport", ["negotiate", "https"])
def test_a_wrong_password_gets_the_real_401(transport):
    with SimHarness(make_scenario(nodes=2, time_factor=1000), transport=transport) as harness:
        with pytest.raises(AuthFailed, match="refused the credentials of hciadmin"):
            session(harness, password="wrong-password").run(Cmdlet("Get-ClusterNode"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_timeout_and_a_lost_shell_behave_the_same_under_each_transport(transport):
    with SimHarness(make_scenario(nodes=2, time_factor=1000), transport=transport) as harness:
        inventory = harness.inventory().clusters[0]
        quick = inventory.transport.model_copy(update={"operation_timeout": 1, "read_timeout": 2})
        s = NodeSession(inventory.node("node1"), quick, SIM_USER, SecretStr(harness.password))
        assert s.run(Cmdlet("Get-ClusterNode")).objects
        harness.endpoints["node1"].hung.set()
        started = time.monotonic()
        with pytest.raises(NodeUnreachable):
            s.run(Cmdlet("Get-ClusterNode"), timeout=2)
        assert time.monotonic() - started < 15
        harness.endpoints["node1"].hung.clear()
        harness.endpoints["node1"].shells.clear()  # the shell is gone, as after a restart with the port back
        assert s.run(Cmdlet("Get-ClusterNode")).objects  # a fresh connection, authenticated again


def test_a_request_that_is_not_encrypted_after_authentication_is_refused():
    with SimHarness(make_scenario(nodes=2, time_factor=1000), transport="negotiate") as harness:
        port = harness.endpoints["node1"].port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        context = spnego.client(SIM_USER, harness.password, hostname="127.0.0.1", service="HTTP",
                                protocol="negotiate", options=spnego.NegotiateOptions.wrapping_winrm)
        token = context.step()
        status = None
        while token is not None:
            conn.request("POST", "/wsman", body=b"", headers={"Authorization": "Negotiate " +
                                                              base64.b64encode(token).decode()})
            response = conn.getresponse()
            response.read()
            status = response.status
            answer = response.getheader("WWW-Authenticate", "")
            token = context.step(base64.b64decode(answer.split(" ", 1)[1])) if " " in answer else None
        assert status == 200 and context.complete
        conn.request("POST", "/wsman", body=b"<s:Envelope/>", headers={
            "Content-Type": "application/soap+xml;charset=UTF-8"})
        refused = conn.getresponse()
        assert refused.status == 401 and refused.getheader("WWW-Authenticate") == "Negotiate"


def test_a_certificate_for_another_name_is_refused_with_a_clear_message(tmp_path):
    harness = SimHarness(make_scenario(nodes=2, time_factor=1000), transport="https")
    ca = ThrowawayCA(tmp_path / "ca")
    wrong = ca.issue("wrong", ["node1.contoso.test"])
    auth = Authenticator("negotiate", SIM_USER, harness.password, tmp_path / "users")
    (tmp_path / "users").write_text(f":{SIM_USER}:{harness.password}\n")
    endpoint = FakeWinRM(harness.sim, "node1", auth, tls=wrong.server_context())
    endpoint.start()
    try:
        transport = Transport(scheme="https", auth="negotiate", cert_validation=str(ca.path))
        s = NodeSession(NodeEndpoint(name="node1", address="127.0.0.1", port=endpoint.port), transport, SIM_USER,
                        SecretStr(harness.password))
        with pytest.raises(CertificateRejected) as refused:
            s.run(Cmdlet("Get-ClusterNode"))
        assert "IP address mismatch" in str(refused.value) and "cert_validation" in str(refused.value)
        assert harness.password not in str(refused.value)
    finally:
        endpoint.stop()


class Recorder:
    """A TCP proxy on loopback that keeps every byte in both directions."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target_port
        self.captured = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self.lock:
                    self.captured += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_nothing_readable_crosses_the_wire_after_negotiate_authentication():
    with SimHarness(make_scenario(nodes=2, time_factor=1000), transport="negotiate") as harness:
        proxy = Recorder(harness.endpoints["node1"].port)
        endpoint = NodeEndpoint(name="node1", address="127.0.0.1", port=proxy.port)
        s = session(harness, endpoint=endpoint)
        nodes = s.run(Cmdlet("Get-ClusterNode")).objects
        build = s.run(Cmdlet("Get-ItemProperty", {"Path": r"HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion"}))
        s.close()
        proxy.close()
        wire = bytes(proxy.captured)
    assert nodes[0]["Manufacturer"] == "Contoso" and build.objects[0]["CurrentBuildNumber"] == "20349"
    assert b"multipart/encrypted" in wire and b"HTTP-SPNEGO-session-encrypted" in wire
    decoded = wire + b"".join(_b64_runs(wire))
    for secret in (harness.password, "Get-ClusterNode", "Get-ItemProperty", "Contoso", "20349", "Envelope"):
        for encoding in ("utf-8", "utf-16-le"):
            assert secret.encode(encoding) not in decoded, f"{secret!r} crossed the wire in clear"


def _b64_runs(data: bytes) -> list[bytes]:
    out = []
    for run in re.findall(rb"[A-Za-z0-9+/]{24,}={0,2}", data):
        try:
            out.append(base64.b64decode(run + b"=" * (-len(run) % 4)))
        except ValueError:
            pass
    return out


def test_the_demo_inventory_names_the_realistic_transport(tmp_path: Path):
    with SimHarness(make_scenario(nodes=2, time_factor=1000)) as harness:
        transport = harness.inventory().clusters[0].transport
    assert (transport.scheme, transport.auth) == ("http", "negotiate")
