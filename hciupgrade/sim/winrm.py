"""A fake WinRM endpoint for one simulated node: WS-Management over HTTP, PSRP through psrpcore's server side.

This is the thin I/O around the simulator. It speaks just enough WS-Management for pypsrp's RunspacePool and
PowerShell (Create, Command, Send, Receive with long-poll, Signal, Delete, Get), authenticates as a Windows
listener does (Negotiate with message encryption over HTTP, or over HTTPS; Basic for debugging: wsauth.py), and
dispatches each pipeline to sim/cmdlets/. It listens on loopback only and refuses anything else.

Traps it handles (reference/remoting.md §3, §6): the ServerPipeline must exist before its CreatePipeline fragment
is fed in; psrpcore has one send buffer, routed here by pipeline id; psrpcore is not thread-safe (a lock per
shell); a failed pipeline needs psrpcore's private _change_state; TCP_NODELAY; a reboot must close keep-alive
sockets, not just stop accepting.
"""

from __future__ import annotations

import base64
import random
import re
import selectors
import socket
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from psrpcore import (
    CreatePipelineEvent,
    EndOfPipelineInputEvent,
    PSRPPayload,
    ServerPipeline,
    ServerRunspacePool,
    StreamType,
)
from psrpcore.types import PSInvocationState

from hciupgrade.net import is_loopback
from hciupgrade.sim import cmdlets
from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.pstypes import (
    category_info,
    error_record,
    exception_of,
    invocation_info,
    normalise_param,
    to_ps,
)
from hciupgrade.sim.wsauth import Authenticator, Refusal

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "pwsh": "http://schemas.microsoft.com/powershell",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

ACTION = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL_ACTION = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
DONE = SHELL_ACTION + "CommandState/Done"
RUNNING = SHELL_ACTION + "CommandState/Running"

ERROR_WSMAN_OPERATION_TIMEDOUT = 2150858793
ERROR_WSMAN_SHELL_NOT_FOUND = 2150858843  # 0x8033805B, as after a reboot


class WSManFault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PipelineRun:
    pipe: ServerPipeline
    create: CreatePipelineEvent | None = None
    done: bool = False


@dataclass
class Shell:
    id: str
    pool: ServerRunspacePool
    lock: threading.Condition = field(default_factory=threading.Condition)
    out: dict[uuid.UUID | None, bytearray] = field(default_factory=dict)
    pipelines: dict[uuid.UUID, PipelineRun] = field(default_factory=dict)

    def pump(self) -> None:
        """Route psrpcore's single send buffer to the pool's or each pipeline's receive queue."""
        while (payload := self.pool.data_to_send()) is not None:
            self.out.setdefault(payload.pipeline_id, bytearray()).extend(payload.data)
        self.lock.notify_all()


class FakeWinRM:
    """One node's endpoint. `start()` opens the port (the same one after a reboot), `stop()` closes it hard."""

    def __init__(self, sim: SimCluster, node: str, auth: Authenticator, *, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        if not is_loopback(host):
            raise ValueError(f"the fake WinRM endpoint listens on loopback only, not {host!r}")
        self.sim = sim
        self.node = node
        self.host = host
        self.port = port
        self.auth = auth
        self.tls = tls
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.shells: dict[str, Shell] = {}
        self._shells_lock = threading.Lock()
        self.requests = 0
        self.hung = threading.Event()  # a hung host: TCP up, no answer (tests of deadlines)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Open the port. The first start picks a free port below the ephemeral range, so that no client
        connection can hold it while the node reboots; a later start reuses it (OSError if it is still busy)."""
        if self._server is not None:
            return
        server = _Server((self.host, self.port), _Handler) if self.port else _bind_free_port(self.host)
        server.endpoint = self
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve, name=f"winrm-{self.node}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the port and every open connection; the node's shells die with it (as wsmprovhost does)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.halt()
        if self._thread is not None:
            self._thread.join()
        server.server_close()
        server.close_connections()
        with self._shells_lock:
            shells, self.shells = list(self.shells.values()), {}
        for shell in shells:
            with shell.lock:
                shell.lock.notify_all()

    # --- WS-Management operations ---------------------------------------------------------------------------
    def handle(self, envelope: ET.Element, caller: str, client: socket.socket) -> ET.Element | None:
        header = envelope.find("s:Header", NS)
        body = envelope.find("s:Body", NS)
        assert header is not None and body is not None
        action = header.findtext("a:Action", "", NS)
        shell_id = None
        for selector in header.iterfind("w:SelectorSet/w:Selector", NS):
            if selector.get("Name") == "ShellId":
                shell_id = selector.text
        timeout = _seconds(header.findtext("w:OperationTimeout", "PT20S", NS))
        if action == ACTION + "Create":
            return self._create(body)
        shell = self._shell(shell_id)
        if action == SHELL_ACTION + "Command":
            return self._command(shell, body, caller)
        if action == SHELL_ACTION + "Send":
            return self._send(shell, body, caller)
        if action == SHELL_ACTION + "Receive":
            return self._receive(shell, body, timeout, client)
        if action == SHELL_ACTION + "Signal":
            return self._signal(shell, body)
        if action == ACTION + "Delete":
            with self._shells_lock:
                self.shells.pop(shell.id, None)
            return None
        if action == ACTION + "Get":
            result = ET.Element(f"{{{NS['rsp']}}}Shell")
            ET.SubElement(result, f"{{{NS['rsp']}}}ShellId").text = shell.id
            ET.SubElement(result, f"{{{NS['rsp']}}}State").text = "Connected"
            return result
        raise WSManFault(2150858817, f"The WS-Management service does not support the action {action}.")

    def _shell(self, shell_id: str | None) -> Shell:
        with self._shells_lock:
            shell = self.shells.get((shell_id or "").upper())
        if shell is None:
            raise WSManFault(ERROR_WSMAN_SHELL_NOT_FOUND,
                             f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the "
                             "shell was not found on the server. Possible causes are: the specified ShellId is "
                             "incorrect or the shell no longer exists on the server.")
        return shell

    def _create(self, body: ET.Element) -> ET.Element:
        shell_xml = body.find("rsp:Shell", NS)
        assert shell_xml is not None
        shell_id = (shell_xml.get("ShellId") or str(uuid.uuid4())).upper()
        creation = shell_xml.findtext("pwsh:creationXml", "", NS)
        shell = Shell(shell_id, ServerRunspacePool())
        with shell.lock:
            shell.pool.receive_data(PSRPPayload(base64.b64decode(creation), StreamType.default, None))
            while shell.pool.next_event() is not None:
                pass
            shell.pump()
        with self._shells_lock:
            self.shells[shell_id] = shell
        created = ET.Element(f"{{{NS['x']}}}ResourceCreated")
        ET.SubElement(created, f"{{{NS['a']}}}Address").text = f"http://{self.host}:{self.port}/wsman"
        refs = ET.SubElement(created, f"{{{NS['a']}}}ReferenceParameters")
        ET.SubElement(refs, f"{{{NS['w']}}}ResourceURI").text = "http://schemas.microsoft.com/powershell/" \
                                                                "Microsoft.PowerShell"
        selectors = ET.SubElement(refs, f"{{{NS['w']}}}SelectorSet")
        ET.SubElement(selectors, f"{{{NS['w']}}}Selector", Name="ShellId").text = shell_id
        wrapper = ET.Element("wrapper")
        wrapper.append(created)
        info = ET.SubElement(wrapper, f"{{{NS['rsp']}}}Shell")
        ET.SubElement(info, f"{{{NS['rsp']}}}ShellId").text = shell_id
        ET.SubElement(info, f"{{{NS['rsp']}}}ResourceUri").text = "http://schemas.microsoft.com/powershell/" \
                                                                  "Microsoft.PowerShell"
        ET.SubElement(info, f"{{{NS['rsp']}}}Owner").text = "hciadmin"
        ET.SubElement(info, f"{{{NS['rsp']}}}OutputStreams").text = "stdout"
        return wrapper

    def _command(self, shell: Shell, body: ET.Element, caller: str) -> ET.Element:
        line = body.find("rsp:CommandLine", NS)
        assert line is not None
        command_id = (line.get("CommandId") or str(uuid.uuid4())).upper()
        pipeline_id = uuid.UUID(command_id)
        data = base64.b64decode(line.findtext("rsp:Arguments", "", NS))
        with shell.lock:
            run = PipelineRun(ServerPipeline(shell.pool, pipeline_id))
            shell.pipelines[pipeline_id] = run
            self._feed(shell, run, data, caller)
        response = ET.Element(f"{{{NS['rsp']}}}CommandResponse")
        ET.SubElement(response, f"{{{NS['rsp']}}}CommandId").text = command_id
        return response

    def _send(self, shell: Shell, body: ET.Element, caller: str) -> ET.Element:
        stream = body.find("rsp:Send/rsp:Stream", NS)
        assert stream is not None
        pipeline_id = uuid.UUID(stream.get("CommandId", ""))
        with shell.lock:
            run = shell.pipelines.get(pipeline_id)
            if run is not None:
                self._feed(shell, run, base64.b64decode(stream.text or ""), caller)
        return ET.Element(f"{{{NS['rsp']}}}SendResponse")

    def _feed(self, shell: Shell, run: PipelineRun, data: bytes, caller: str) -> None:
        shell.pool.receive_data(PSRPPayload(data, StreamType.default, run.pipe.pipeline_id))
        while (event := shell.pool.next_event()) is not None:
            if isinstance(event, CreatePipelineEvent):
                run.create = event
                if event.pipeline.no_input:
                    self._execute(shell, run, caller)
            elif isinstance(event, EndOfPipelineInputEvent) and run.create is not None:
                self._execute(shell, run, caller)
        shell.pump()

    def _execute(self, shell: Shell, run: PipelineRun, caller: str) -> None:
        """Run every statement of the pipeline against the simulator; a terminating error fails the rest."""
        pipe = run.pipe
        pipe.start()
        assert run.create is not None
        statements: list[list[Any]] = [[]]
        for command in run.create.pipeline.commands:
            statements[-1].append(command)
            if command.end_of_statement:
                statements.append([])
        try:
            for statement in (s for s in statements if s):
                params = [[(n, normalise_param(v)) for n, v in c.parameters] for c in statement]
                if statement[0].is_script:
                    outputs, errors = cmdlets.invoke_script(self.sim, self.node, caller,
                                                            statement[0].command_text, params[0])
                else:
                    outputs, errors = cmdlets.invoke(
                        self.sim, self.node, caller,
                        [(c.command_text, p) for c, p in zip(statement, params, strict=True)])
                for output in outputs:
                    pipe.write_output(to_ps(output, self.sim.knobs.enum_forms))
                for error in errors:
                    pipe.write_error(exception_of(error), category_info(error), error.target, error.fq_error_id,
                                     invocation_info=invocation_info(error),
                                     script_stack_trace="at <ScriptBlock>, <No file>: line 1")
        except cmdlets.Terminating as terminating:
            pipe._change_state(PSInvocationState.Failed, error_record(terminating.error))  # no public API
        else:
            pipe.complete()
        run.done = True

    def _receive(self, shell: Shell, body: ET.Element, timeout: float, client: socket.socket) -> ET.Element:
        desired = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = desired.get("CommandId") if desired is not None else None
        key = uuid.UUID(command_id) if command_id else None
        with shell.lock:
            shell.lock.wait_for(lambda: bool(shell.out.get(key)) or self._server is None, timeout=timeout)
            if self._server is None:
                raise ConnectionAbortedError("endpoint stopped")
            data = shell.out.get(key)
            if not data:
                raise WSManFault(ERROR_WSMAN_OPERATION_TIMEDOUT,
                                 "The WS-Management service cannot complete the operation within the time "
                                 "specified in OperationTimeout.")
            if _peer_gone(client):  # the client gave up on this long-poll: keep the data for its retry
                raise ConnectionAbortedError("client went away")
            payload = bytes(data)
            data.clear()
            run = shell.pipelines.get(key) if key else None
            finished = run is not None and run.done
        response = ET.Element(f"{{{NS['rsp']}}}ReceiveResponse")
        stream = ET.SubElement(response, f"{{{NS['rsp']}}}Stream", Name="stdout")
        if command_id:
            stream.set("CommandId", command_id)
        stream.text = base64.b64encode(payload).decode()
        if command_id:
            ET.SubElement(response, f"{{{NS['rsp']}}}CommandState", CommandId=command_id,
                          State=DONE if finished else RUNNING)
        return response

    def _signal(self, shell: Shell, body: ET.Element) -> ET.Element:
        signal = body.find("rsp:Signal", NS)
        assert signal is not None
        pipeline_id = uuid.UUID(signal.get("CommandId", str(uuid.UUID(int=0))))
        code = signal.findtext("rsp:Code", "", NS)
        with shell.lock:
            run = shell.pipelines.get(pipeline_id)
            if run is not None and code.endswith("terminate"):
                shell.pipelines.pop(pipeline_id, None)
                shell.out.pop(pipeline_id, None)
            elif run is not None and run.pipe.state == PSInvocationState.Running:
                run.pipe.stop()
                shell.pump()
        return ET.Element(f"{{{NS['rsp']}}}SignalResponse")


def _bind_free_port(host: str) -> _Server:
    """A listener on a free port below Linux's default ephemeral range (32768-60999), bound at the first try that
    succeeds: probing a port and binding it later lets another simulator process take it in between (four `sim
    serve` processes starting 800 endpoints at once collided)."""
    for _ in range(200):
        try:
            return _Server((host, random.randint(20000, 32000)), _Handler)
        except OSError:
            continue
    return _Server((host, 0), _Handler)


def _seconds(duration: str) -> float:
    match = re.match(r"^PT([\d.]+)S$", duration.strip())
    return float(match.group(1)) if match else 20.0


def _peer_gone(sock: socket.socket) -> bool:
    try:  # the raw TCP stream (an SSLSocket refuses peeking): end of stream means the client hung up
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    endpoint: FakeWinRM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._halted = False
        self._wake_read, self._wake_write = socket.socketpair()
        super().__init__(*args, **kwargs)

    def serve(self) -> None:
        """Accept connections until `halt`, waiting on the listening socket and a wake-up pair: no polling.
        (serve_forever polls for its shutdown flag: 200 endpoints at 20 polls a second cost an idle simulator
        process a fifth of a core, and a longer poll would hold up a node's reboot by as much.)"""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._halted:
                for key, _ in selector.select():
                    if key.fileobj is self and not self._halted:
                        self._handle_request_noblock()

    def halt(self) -> None:
        self._halted = True
        self._wake_write.send(b"!")

    def server_close(self) -> None:
        super().server_close()
        self._wake_read.close()
        self._wake_write.close()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return is_loopback(client_address[0])

    def process_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conn_lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-reply (reboot, abandoned long-poll) is not an error here


class _Handler(BaseHTTPRequestHandler):
    """One TCP connection: its authentication (and encryption context) lives as long as the connection."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.gate = self.server.endpoint.auth.new_connection()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        endpoint = self.server.endpoint
        endpoint.requests += 1
        while endpoint.hung.is_set() and endpoint.running:
            time.sleep(0.05)
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b""
        verdict = self.gate.receive(dict(self.headers.items()), raw)
        if isinstance(verdict, Refusal):
            self._refuse(verdict)
            return
        if not verdict.body:
            self._reply(200, b"", verdict.headers)
            return
        envelope = ET.fromstring(verdict.body)
        message_id = envelope.findtext("s:Header/a:MessageID", "", NS)
        action = envelope.findtext("s:Header/a:Action", "", NS)
        try:
            result = endpoint.handle(envelope, verdict.caller, self.connection)
        except WSManFault as fault:
            self._reply(500, _fault(message_id, fault, endpoint.node), verdict.headers)
            return
        except ConnectionAbortedError:
            self.close_connection = True
            return
        self._reply(200, _envelope(action + "Response", message_id, result), verdict.headers)

    def _refuse(self, refusal: Refusal) -> None:
        try:
            self.send_response(refusal.status)
            for name, value in refusal.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass
        self.close_connection = refusal.close

    def _reply(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        content_type, body = self.gate.send(payload)
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


def _envelope(action: str, relates_to: str, body_content: ET.Element | None) -> bytes:
    envelope = ET.Element(f"{{{NS['s']}}}Envelope")
    header = ET.SubElement(envelope, f"{{{NS['s']}}}Header")
    ET.SubElement(header, f"{{{NS['a']}}}Action").text = action
    ET.SubElement(header, f"{{{NS['a']}}}MessageID").text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, f"{{{NS['a']}}}RelatesTo").text = relates_to
    body = ET.SubElement(envelope, f"{{{NS['s']}}}Body")
    if body_content is not None:
        if body_content.tag == "wrapper":
            body.extend(list(body_content))
        else:
            body.append(body_content)
    return ET.tostring(envelope, encoding="utf-8")


def _fault(relates_to: str, fault: WSManFault, machine: str) -> bytes:
    envelope = ET.Element(f"{{{NS['s']}}}Envelope")
    header = ET.SubElement(envelope, f"{{{NS['s']}}}Header")
    ET.SubElement(header, f"{{{NS['a']}}}Action").text = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
    ET.SubElement(header, f"{{{NS['a']}}}RelatesTo").text = relates_to
    body = ET.SubElement(envelope, f"{{{NS['s']}}}Body")
    soap_fault = ET.SubElement(body, f"{{{NS['s']}}}Fault")
    code = ET.SubElement(soap_fault, f"{{{NS['s']}}}Code")
    ET.SubElement(code, f"{{{NS['s']}}}Value").text = "s:Receiver"
    reason = ET.SubElement(soap_fault, f"{{{NS['s']}}}Reason")
    ET.SubElement(reason, f"{{{NS['s']}}}Text").text = str(fault)
    detail = ET.SubElement(soap_fault, f"{{{NS['s']}}}Detail")
    wsman_fault = ET.SubElement(detail, f"{{{NS['f']}}}WSManFault", Code=str(fault.code), Machine=machine)
    ET.SubElement(wsman_fault, f"{{{NS['f']}}}Message").text = str(fault)
    return ET.tostring(envelope, encoding="utf-8")
