"""Authentication and message encryption of the fake WinRM endpoint, per TCP connection, as Windows does them:

- Basic: the credential in every request (loopback debugging only).
- Negotiate (SPNEGO with NTLM, through pyspnego's acceptor): `401 WWW-Authenticate: Negotiate`, the token exchange
  on the kept-alive connection, then, over HTTP, every body in both directions as `multipart/encrypted` with
  `application/HTTP-SPNEGO-session-encrypted` parts (MS-WSMV 2.2.9.1, the layout pypsrp writes). A request that is
  not encrypted after authentication is refused with 401, as a Windows listener with AllowUnencrypted=false
  refuses it; a wrong password gets the real 401.
- Over HTTPS the TLS channel protects the body: Negotiate authenticates, nothing is wrapped.

The WS-Management and PSRP handling (winrm.py) sees plaintext SOAP and the caller's name only.
"""

from __future__ import annotations

import base64
import hmac
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import spnego
import spnego._ntlm as _ntlm
from spnego.exceptions import SpnegoError

BOUNDARY = "Encrypted Boundary"
SPNEGO_ENCRYPTED = "application/HTTP-SPNEGO-session-encrypted"
SOAP = "application/soap+xml;charset=UTF-8"
# pyspnego's NTLM acceptor takes its credential file from the environment (NTLM_USER_FILE) when its context is
# made. One process may serve clusters with different passwords, and setting the variable per exchange raced with
# clients in the same process that read the environment at that moment (requests' proxy lookup iterates it: a
# KeyError mid-iteration). So the acceptor is told its endpoint's file through a thread-local instead, and the
# environment is never written.
_ACCEPTOR_FILE = threading.local()
_environment_file = _ntlm._get_credential_file


def _credential_file() -> str | None:
    return getattr(_ACCEPTOR_FILE, "path", None) or _environment_file()


_ntlm._get_credential_file = _credential_file


@dataclass
class Refusal:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


@dataclass
class Received:
    caller: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # to send with the reply (the last auth token)


class BasicConnection:
    def __init__(self, credentials: bytes) -> None:
        self._credentials = credentials

    def receive(self, headers: dict[str, str], body: bytes) -> Received | Refusal:
        header = headers.get("Authorization") or ""
        if header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:], validate=True)
            except ValueError:
                given = b""
            if hmac.compare_digest(given, self._credentials):
                return Received(given.decode().split(":", 1)[0], body)
        return Refusal(401, {"WWW-Authenticate": 'Basic realm="WSMAN"'})

    def send(self, payload: bytes) -> tuple[str, bytes]:
        return SOAP, payload


class NegotiateConnection:
    def __init__(self, user_file: Path, encrypt: bool) -> None:
        self._user_file, self._encrypt = user_file, encrypt
        self._context: spnego.ContextProxy | None = None
        self._caller: str | None = None

    def receive(self, headers: dict[str, str], body: bytes) -> Received | Refusal:
        header = headers.get("Authorization") or ""
        if header.lower().startswith("negotiate "):
            return self._authenticate(base64.b64decode(header.split(" ", 1)[1]), body)
        if self._caller is None or self._context is None:
            return Refusal(401, {"WWW-Authenticate": "Negotiate"})
        if not self._encrypt:
            return Received(self._caller, body)
        if not headers.get("Content-Type", "").startswith("multipart/encrypted"):
            return Refusal(401, {"WWW-Authenticate": "Negotiate"}, close=True)  # AllowUnencrypted=false
        try:
            return Received(self._caller, unwrap(self._context, body, headers["Content-Type"]))
        except (SpnegoError, ValueError, IndexError, struct.error):
            return Refusal(400, close=True)

    def _authenticate(self, token: bytes, body: bytes) -> Received | Refusal:
        _ACCEPTOR_FILE.path = str(self._user_file)
        try:
            if self._context is None or self._context.complete:
                options = spnego.NegotiateOptions.wrapping_winrm if self._encrypt else spnego.NegotiateOptions(0)
                self._context, self._caller = spnego.server(protocol="negotiate", options=options), None
            out = self._context.step(token)
        except SpnegoError:
            self._context = None
            return Refusal(401, {"WWW-Authenticate": "Negotiate"}, close=True)
        finally:
            _ACCEPTOR_FILE.path = None
        reply = {"WWW-Authenticate": f"Negotiate {base64.b64encode(out).decode()}"} if out else {}
        if not self._context.complete:
            return Refusal(401, reply)
        self._caller = str(self._context.client_principal or "").split("\\")[-1]
        return Received(self._caller, body, reply)  # the request that completed the exchange carries no payload

    def send(self, payload: bytes) -> tuple[str, bytes]:
        if not self._encrypt or self._context is None or not payload:
            return SOAP, payload
        return wrap(self._context, payload)


def wrap(context: spnego.ContextProxy, payload: bytes) -> tuple[str, bytes]:
    header, data, padding = context.wrap_winrm(payload)
    body = "\r\n".join([
        f"--{BOUNDARY}", f"\tContent-Type: {SPNEGO_ENCRYPTED}",
        f"\tOriginalContent: type={SOAP};Length={len(payload) + padding}",
        f"--{BOUNDARY}", "\tContent-Type: application/octet-stream", ""]).encode()
    body += struct.pack("<i", len(header)) + header + data + f"--{BOUNDARY}--\r\n".encode()
    return f'multipart/encrypted;protocol="{SPNEGO_ENCRYPTED}";boundary="{BOUNDARY}"', body


def unwrap(context: spnego.ContextProxy, body: bytes, content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    boundary = match.group(1) if match else BOUNDARY
    parts = [p for p in re.split(rb"--\s*" + re.escape(boundary.encode()) + rb"(?:--)?\r\n", body) if p]
    message = b""
    for header, payload in zip(parts[0::2], parts[1::2], strict=False):
        length = int(header.split(b"Length=")[1].split(b"\r\n")[0])
        wrapped = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
        size = struct.unpack("<i", wrapped[:4])[0]
        plain = context.unwrap_winrm(wrapped[4:4 + size], wrapped[4 + size:])
        if len(plain) != length:
            raise ValueError(f"decrypted {len(plain)} bytes, the header announced {length}")
        message += plain
    return message


@dataclass(frozen=True)
class Authenticator:
    """What an endpoint accepts: Basic, or Negotiate (encrypting the bodies unless TLS protects them)."""

    scheme: str  # basic | negotiate
    username: str
    password: str
    user_file: Path | None = None
    encrypt: bool = False

    def new_connection(self) -> BasicConnection | NegotiateConnection:
        if self.scheme == "basic":
            return BasicConnection(f"{self.username}:{self.password}".encode())
        assert self.user_file is not None
        return NegotiateConnection(self.user_file, self.encrypt)
