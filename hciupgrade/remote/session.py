"""The only door to a node: one pypsrp runspace pool per node, opened lazily and reused; calls with deadlines;
transport failures mapped to a few exceptions; after a failure the pool and the WSMan object are dropped, so the
next call reconnects (a node that rebooted has lost its shells).

Traps of pypsrp 0.9.1 handled here (reference/remoting.md): had_errors is set only for terminating errors (the
error stream is read too); there is no overall invoke timeout (begin_invoke + poll_invoke + stop); close() raises
on a rebooted host (best effort); nothing is thread-safe (a lock per node).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from pydantic import SecretStr
from pypsrp.complex_objects import GenericComplexObject, PSInvocationState
from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError, WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from hciupgrade.models import NodeEndpoint, Transport
from hciupgrade.remote.calls import SWITCH, Call, Cmdlet, PackagedScript, Pipeline
from hciupgrade.remote.errors import (
    AuthFailed,
    CallTimedOut,
    CertificateRejected,
    CmdletFailed,
    ErrorInfo,
    NodeUnreachable,
    RemotingError,
)

log = logging.getLogger(__name__)


class ShellGone(NodeUnreachable):
    """The node answered, but the runspace pool's shell no longer exists there (it restarted)."""

SHELL_NOT_FOUND = 0x8033805B

# Wall seconds of recent remote calls, every session of the process (benchmarks read it).
CALL_SECONDS: deque[float] = deque(maxlen=100_000)


@dataclass
class Result:
    objects: list[Any] = field(default_factory=list)
    errors: list[ErrorInfo] = field(default_factory=list)
    types: list[tuple[str, ...]] = field(default_factory=list)  # each object's .NET type names, as sent

    @property
    def terminated(self) -> bool:
        return any(e.terminating for e in self.errors)

    def of_type(self, name: str) -> list[Any]:
        """The objects whose first type name ends with `name` (a CIM class after its '#'/'/', a .NET class after
        its namespace): how the objects of a script that runs several cmdlets are told apart."""
        return [o for o, types in zip(self.objects, self.types, strict=True)
                if types and re.split(r"[./#]", types[0])[-1] == name]


def to_plain(value: Any) -> Any:
    """A deserialised object as plain data: a dict of adapted + extended properties (extended win, as in
    PowerShell's ETS), enums as their names, lists as lists."""
    if isinstance(value, GenericComplexObject):
        if "System.Enum" in value.types:  # its name; its integer when the sender gave no ToString
            return value.to_string if value.to_string else value.property_sets[0]
        if value.adapted_properties or value.extended_properties:
            merged = {**value.adapted_properties, **value.extended_properties}
            return {k: to_plain(v) for k, v in merged.items()}
        if value.property_sets:
            return to_plain(value.property_sets[0]) if len(value.property_sets) == 1 else [
                to_plain(v) for v in value.property_sets]
        return str(value)
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {to_plain(k): to_plain(v) for k, v in value.items()}
    return value


def type_names(value: Any) -> tuple[str, ...]:
    return tuple(value.types) if isinstance(value, GenericComplexObject) else ()


def error_info(err: Any, terminating: bool) -> ErrorInfo:
    exception = getattr(err, "exception", None)
    exception_type = None
    hresult = None
    if isinstance(exception, GenericComplexObject):
        exception_type = exception.types[0] if exception.types else None
        raw = exception.adapted_properties.get("HResult", exception.extended_properties.get("HResult"))
        hresult = raw if isinstance(raw, int) else None
    return ErrorInfo(
        message=str(err),
        fq_error_id=getattr(err, "fq_error", "") or "",
        category=getattr(err, "category", None),
        target=getattr(err, "target_name", None) or None,
        exception_type=exception_type,
        hresult=hresult,
        terminating=terminating,
        activity=getattr(err, "activity", None) or None,
    )


def _tls_reason(error: Exception) -> str:
    """The verification failure from an SSLError's text (no URL, no credential): what an operator must fix."""
    match = re.search(r"certificate verify failed: ([^(\]'\")]+)", str(error))
    reason = match.group(1).strip().rstrip(".") if match else type(error).__name__
    return f"{reason}; check the certificate's names and transport.cert_validation (the CA bundle)"


class Session(Protocol):
    """What the cluster client needs of a node's session: pypsrp's (NodeSession), the read-only survey's
    (remote/readonly.py), or the simulator's in-process one (sim/inprocess.py)."""

    @property
    def call_seconds(self) -> list[float]: ...

    def run(self, call: Call, *, timeout: float | None = None) -> Result: ...

    def close(self) -> None: ...


class NodeSession:
    """A node's remoting session. `run()` is safe to call from several threads; calls are serialised."""

    def __init__(self, endpoint: NodeEndpoint, transport: Transport, username: str, password: SecretStr) -> None:
        self.node = endpoint.name
        self._endpoint = endpoint
        self._transport = transport
        self._username = username
        self._password = password
        self._lock = threading.Lock()
        self._wsman: WSMan | None = None
        self._pool: RunspacePool | None = None
        self.call_seconds: list[float] = []

    def _connect(self) -> RunspacePool:
        if self._pool is not None:
            return self._pool
        t = self._transport
        self._port_open()
        auth_kwargs: dict[str, Any] = {}
        if t.auth == "basic" and t.scheme == "http":
            auth_kwargs["encryption"] = "never"  # only reachable for loopback (models.ClusterInventory)
        self._wsman = WSMan(
            self._endpoint.address, port=self._endpoint.port, ssl=t.scheme == "https", auth=t.auth,
            username=self._username, password=self._password.get_secret_value(),
            cert_validation=t.cert_validation, connection_timeout=t.connection_timeout,
            operation_timeout=t.operation_timeout, read_timeout=t.read_timeout,
            reconnection_retries=0, reconnection_backoff=0.5, **auth_kwargs,
        )
        pool = RunspacePool(self._wsman, configuration_name=t.configuration_name)
        pool.open()
        # pypsrp read the environment's proxy settings for this endpoint when it built its requests session (just
        # now); left on, requests would scan the environment again on every request (6% of a call, measured)
        session = getattr(self._wsman.transport, "session", None)
        if session is not None:
            session.trust_env = False
        self._pool = pool
        return pool

    def reset(self, *, graceful: bool = True) -> None:
        """Drop the pool and the WSMan object (after a reboot the shell is gone, and auth state is stale). Not
        graceful after an interrupted call: the connection's state (and its encryption context) is unknown, so
        nothing more is sent on it; the node drops the orphaned shell at its idle timeout."""
        pool, wsman = self._pool, self._wsman
        self._pool = self._wsman = None
        if not graceful:
            return
        if pool is not None:
            try:
                pool.close()
            except Exception:  # a rebooted host raises here; nothing to save
                pass
        if wsman is not None:
            try:
                wsman.close()
            except Exception:
                pass

    close = reset

    def run(self, call: Call, *, timeout: float | None = None) -> Result:
        """Run one call; return its objects and non-terminating errors. Raises CmdletFailed on a terminating
        error, NodeUnreachable/CallTimedOut/AuthFailed/RemotingError on transport failures."""
        try:
            return self._run(call, timeout)
        except ShellGone:
            # the node restarted since this pool was opened: the command was never created, so it is safe to
            # send it once more on a fresh connection
            return self._run(call, timeout)

    def _run(self, call: Call, timeout: float | None) -> Result:
        deadline = time.monotonic() + (timeout or self._transport.call_timeout)
        with self._lock:
            started = time.perf_counter()
            try:
                result = self._invoke(call, deadline)
            except (NodeUnreachable, AuthFailed, RemotingError):
                self.reset()
                raise
            except AuthenticationError:
                self.reset()
                raise AuthFailed(self.node, f"the node refused the credentials of {self._username}") from None
            except WSManFaultError as e:
                self.reset()
                if e.code == SHELL_NOT_FOUND:
                    raise ShellGone(self.node, f"remote shell gone (WSMan fault {e.code:#x})") from None
                if e.code == 0x80338029:
                    raise NodeUnreachable(self.node, f"operation timed out (WSMan fault {e.code:#x})") from None
                raise RemotingError(self.node, f"WSMan fault {e.code}: {e.reason}") from None
            except requests.exceptions.SSLError as e:
                self.reset()
                raise CertificateRejected(self.node, "TLS: the node's certificate was refused: "
                                          + _tls_reason(e)) from None
            except requests.exceptions.RequestException as e:  # refused, reset, timed out, cut mid-answer
                self.reset()
                raise NodeUnreachable(self.node, f"{type(e).__name__}: connection failed") from None
            except (WinRMTransportError, WinRMError) as e:
                self.reset()
                raise RemotingError(self.node, f"{type(e).__name__}: {e}") from None
            except BaseException:  # interrupted mid-call (a cancellation): the next call starts afresh
                self.reset(graceful=False)
                raise
            finally:
                elapsed = time.perf_counter() - started
                self.call_seconds.append(elapsed)
                CALL_SECONDS.append(elapsed)
        if result.terminated:
            errors = sorted(result.errors, key=lambda e: not e.terminating)
            raise CmdletFailed(self.node, str(call), errors)
        return result

    def _port_open(self) -> None:
        """A plain TCP connect to the WinRM port before a new pool: while a node restarts, each poll is refused
        here for a fraction of a millisecond of CPU, instead of building pypsrp's transport (a requests session,
        a TLS context, the authentication context: about 5 ms a poll, measured with py-spy). An open port proves
        nothing more; the pool's own opening does."""
        address = (self._endpoint.address, self._endpoint.port)
        try:
            socket.create_connection(address, timeout=self._transport.connection_timeout).close()
        except OSError as e:
            raise NodeUnreachable(self.node, f"{type(e).__name__}: connection failed") from None

    def _invoke(self, call: Call, deadline: float) -> Result:
        pool = self._connect()
        ps = PowerShell(pool)
        commands = call.commands if isinstance(call, Pipeline) else (call,)
        for command in commands:
            if isinstance(command, PackagedScript):
                ps.add_script(command.text)  # a constant file shipped with the package, never built from input
            else:
                assert isinstance(command, Cmdlet)
                ps.add_cmdlet(command.name)
            for name, value in command.parameters.items():
                ps.add_parameter(name, None if value is SWITCH else (list(value) if isinstance(value, tuple)
                                                                       else value))
        ps.begin_invoke()
        while ps.state == PSInvocationState.RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    ps.stop()
                except Exception:
                    pass
                raise CallTimedOut(self.node, f"{call} did not finish before its deadline")
            ps.poll_invoke(timeout=max(1, min(int(remaining), self._transport.operation_timeout)))
        terminating = ps.state == PSInvocationState.FAILED
        errors = [error_info(e, False) for e in ps.streams.error]
        if terminating:
            if errors:  # the Failed state's ExceptionAsErrorRecord is the last one pypsrp appended
                errors[-1] = error_info(ps.streams.error[-1], True)
            else:
                errors.append(ErrorInfo("the pipeline failed", "PipelineFailed", terminating=True))
        return Result([to_plain(o) for o in ps.output], errors, [type_names(o) for o in ps.output])
