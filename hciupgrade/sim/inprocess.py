"""An in-process session to the simulated cluster, for tests that run the engine many times (the property test).

It has NodeSession's interface and keeps the wire's shapes: every object is serialised by psrpcore and read back
by pypsrp's deserialiser, exactly as over the fake endpoint; only HTTP and WS-Management are skipped. Flow tests
and the demo use the real client over the fake endpoint instead.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from psrpcore.types import serialize
from pypsrp.serializer import Serializer

from hciupgrade.remote import CmdletFailed, ErrorInfo, NodeUnreachable, Result
from hciupgrade.remote.calls import SWITCH, Call, Cmdlet, PackagedScript, Pipeline
from hciupgrade.remote.session import error_info, to_plain, type_names
from hciupgrade.sim import cmdlets
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.pstypes import error_record, to_ps


class InProcessSession:
    def __init__(self, sim: SimCluster, node: str, caller: str) -> None:
        self.sim, self.node, self.caller = sim, node, caller
        self.call_seconds: list[float] = []
        self._serializer = Serializer()

    def reset(self, *, graceful: bool = True) -> None:
        pass

    close = reset

    def _wire(self, value: Any) -> Any:
        xml = ET.tostring(serialize(to_ps(value, self.sim.knobs.enum_forms), None), encoding="unicode")
        return self._serializer.deserialize(xml)

    def _error(self, error: cmdlets.ErrorOut, terminating: bool) -> ErrorInfo:
        """An error record as the production code reads it off the wire: serialised by psrpcore, read back by
        pypsrp, parsed by the remote layer."""
        xml = ET.tostring(serialize(error_record(error), None), encoding="unicode")
        return error_info(self._serializer.deserialize(xml), terminating)

    def run(self, call: Call, *, timeout: float | None = None) -> Result:
        with self.sim.lock:
            self.sim.advance()
            if not self.sim.reachable(self.node):
                raise NodeUnreachable(self.node, "ConnectionError: connection failed")
        commands = call.commands if isinstance(call, Pipeline) else (call,)
        raw = [[(k, None if v is SWITCH else (list(v) if isinstance(v, tuple) else v))
                for k, v in c.parameters.items()] for c in commands]
        try:
            if isinstance(commands[0], PackagedScript):
                outputs, errors = cmdlets.invoke_script(self.sim, self.node, self.caller, commands[0].text, raw[0])
            else:
                outputs, errors = cmdlets.invoke(self.sim, self.node, self.caller,
                                                 [(c.name, r) for c, r in zip(commands, raw, strict=True)
                                                  if isinstance(c, Cmdlet)])
        except cmdlets.Terminating as t:
            raise CmdletFailed(self.node, str(call), [self._error(t.error, True)]) from None
        received = [self._wire(o) for o in outputs]
        return Result([to_plain(o) for o in received], [self._error(e, False) for e in errors],
                      [type_names(o) for o in received])


def client_for(sim: SimCluster, caller: str = "hciadmin") -> Any:
    """A ClusterClient whose sessions are in-process ones to `sim`."""
    from pydantic import SecretStr

    from hciupgrade.cluster import ClusterClient
    from hciupgrade.models import ClusterInventory, CredentialRef, NodeEndpoint, Transport

    inventory = ClusterInventory(
        name=sim.name, nodes=[NodeEndpoint(name=x, address="127.0.0.1", port=5985) for x in sim.nodes],
        transport=Transport(scheme="http", auth="basic"), time_factor=sim.clock.time_factor,
        credential=CredentialRef(username=caller, password_env="UNUSED"))
    return ClusterClient(inventory, SecretStr("unused"),
                         sessions={x: InProcessSession(sim, x, caller) for x in sim.nodes})
