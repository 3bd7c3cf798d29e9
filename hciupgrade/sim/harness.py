"""Run a simulated cluster: the state machine, one fake WinRM endpoint per node, and the driver that moves time.

The driver is the only loop: it fires due timers and opens or closes each node's endpoint as the node goes down
for a reboot or comes back, so a client sees exactly what it would see from a real node.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from hciupgrade.azure.target import AzureCredential, AzureTarget, IpPool, ManagementNetwork
from hciupgrade.models import ClusterInventory, CredentialRef, Inventory, NodeEndpoint, Transport
from hciupgrade.sim.arm import FakeArm
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.scenario import Scenario
from hciupgrade.sim.tls import ThrowawayCA
from hciupgrade.sim.winrm import FakeWinRM
from hciupgrade.sim.wsauth import Authenticator

SIM_USER = "hciadmin"
PASSWORD_ENV = "HCI_UPGRADE_SIM_PASSWORD"
ARM_TOKEN_ENV = "HCI_UPGRADE_SIM_ARM_TOKEN"


SimTransport = Literal["negotiate", "https", "basic"]
TRANSPORTS: tuple[SimTransport, ...] = ("negotiate", "https", "basic")


class SimHarness:
    """`transport`: what a real node's listener does, Negotiate with message encryption over HTTP (the default), or
    Negotiate over HTTPS with a certificate from a throwaway CA; or Basic over plain HTTP, for debugging."""

    def __init__(self, scenario: Scenario, *, password: str | None = None, tick: float = 0.002,
                 transport: SimTransport = "negotiate", azure: FakeArm | None = None) -> None:
        """`azure`: a simulated ARM to register the cluster with (its Azure side: the solution upgrade)."""
        self.scenario = scenario
        self.azure = azure
        if azure is not None:
            azure.add_cluster(scenario.cluster.name, [n.name for n in scenario.cluster.nodes], faults=scenario.azure)
        self.sim = SimCluster(scenario)
        self.password = password or secrets.token_urlsafe(18)
        self.transport = transport
        self._files = tempfile.TemporaryDirectory(prefix="hci-sim-")
        folder = Path(self._files.name)
        user_file = folder / "ntlm-users"
        user_file.write_text(f":{SIM_USER}:{self.password}\n")
        user_file.chmod(0o600)
        auth = Authenticator("basic" if transport == "basic" else "negotiate", SIM_USER, self.password,
                             user_file, encrypt=transport == "negotiate")
        self.ca = ThrowawayCA(folder / "ca") if transport == "https" else None
        tls = self.ca.issue("endpoint", ["127.0.0.1", "localhost"]).server_context() if self.ca else None
        self.endpoints = {name: FakeWinRM(self.sim, name, auth, tls=tls) for name in self.sim.nodes}
        self._tick = tick
        self._stop = threading.Event()
        self._driver: threading.Thread | None = None

    def __enter__(self) -> SimHarness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, drive: bool = True) -> None:
        """`drive`: a thread of its own moves this cluster's time; without it, the caller calls `step` (one
        thread for many clusters: `sim serve` with dozens of clusters would otherwise wake a thread per cluster
        every tick, most of its CPU while idle)."""
        for name, endpoint in self.endpoints.items():
            endpoint.start()  # bind every port once, so a node keeps its port across reboots
            if not self.sim.reachable(name):
                endpoint.stop()
        if drive:
            self._driver = threading.Thread(target=self._drive, name="sim-driver", daemon=True)
            self._driver.start()

    def stop(self) -> None:
        self._stop.set()
        if self._driver:
            self._driver.join(timeout=2)
        for endpoint in self.endpoints.values():
            endpoint.stop()
        self._files.cleanup()

    def _drive(self) -> None:
        while not self._stop.wait(self._tick):
            self.step()

    def step(self) -> None:
        """One tick: fire the due timers, and open or close each node's endpoint as the node is up or down."""
        self.sim.advance()
        for name, endpoint in self.endpoints.items():
            want = self.sim.reachable(name)
            if want and not endpoint.running:
                try:
                    endpoint.start()
                except OSError:
                    continue  # the port is still busy: WinRM comes up a tick later
                with self.sim.lock:
                    self.sim._log("endpoint", name, status="open")
            elif not want and endpoint.running:
                endpoint.stop()
                with self.sim.lock:
                    self.sim._log("endpoint", name, status="closed")

    def client_transport(self) -> Transport:
        """How a client reaches these endpoints: what the inventory says."""
        if self.transport == "basic":
            return Transport(scheme="http", auth="basic")
        if self.transport == "https":
            assert self.ca is not None
            return Transport(scheme="https", auth="negotiate", cert_validation=str(self.ca.path))
        return Transport(scheme="http", auth="negotiate")

    def inventory(self) -> Inventory:
        """The inventory an operator would write for this cluster: loopback, the transport, password by env var,
        and its Azure side when a simulated ARM serves it."""
        azure = None
        if self.azure is not None:
            azure = AzureTarget(
                subscription_id=self.azure.clusters[self.sim.name.lower()].subscription,
                resource_group=self.azure.clusters[self.sim.name.lower()].resource_group, location="westeurope",
                endpoint=self.azure.endpoint, credential=AzureCredential(kind="simulator", token_env=ARM_TOKEN_ENV),
                key_vault=self.azure.clusters[self.sim.name.lower()].key_vault,
                ip_pool=IpPool(start="192.168.10.50", end="192.168.10.55"), cluster_ip="192.168.10.20",
                network=ManagementNetwork(subnet_mask="255.255.255.0", gateway="192.168.10.1",
                                          dns_servers=["192.168.10.5"]),
                node_addresses={name: f"192.168.10.{11 + i}" for i, name in enumerate(self.endpoints)},
                domain_fqdn="corp.contoso.com")
        return Inventory(clusters=[ClusterInventory(
            name=self.sim.name,
            nodes=[NodeEndpoint(name=name, address="127.0.0.1", port=ep.port) for name, ep in self.endpoints.items()],
            transport=self.client_transport(),
            credential=CredentialRef(username=SIM_USER, password_env=PASSWORD_ENV),
            time_factor=self.scenario.time_factor,
            azure=azure,
            target_release=self.scenario.cluster.target_release if self.scenario.cluster.target_release != "23H2"
            else None,  # the reference procedure's default needs no line
        )])

    def environment(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.password, **({ARM_TOKEN_ENV: self.azure.token} if self.azure else {})}

    def events(self) -> list[dict[str, Any]]:
        with self.sim.lock:
            return list(self.sim.events)

    def write_events(self, path: str | Path) -> None:
        with open(path, "w") as fh:
            for event in self.events():
                fh.write(json.dumps(event) + "\n")
