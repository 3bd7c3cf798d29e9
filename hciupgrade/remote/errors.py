"""What can go wrong with a remote call, as a small set of exceptions and a typed error record.

Messages carry the node, the call's shape (names only) and the remote error text; never a credential.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorInfo:
    """One PowerShell error record, terminating or not."""

    message: str
    fq_error_id: str
    category: int | None = None
    target: str | None = None
    exception_type: str | None = None
    hresult: int | None = None
    terminating: bool = False
    activity: str | None = None  # the command that wrote it (CategoryInfo.Activity)

    @property
    def error_id(self) -> str:
        """The FullyQualifiedErrorId's first part: "PathNotFound" of "PathNotFound,Microsoft...Command"."""
        return self.fq_error_id.split(",", 1)[0]

    @property
    def win32_code(self) -> int | None:
        """The Win32 code of an HRESULT_FROM_WIN32 HResult (0x8007xxxx), e.g. 5987 for a degraded space."""
        if self.hresult is None:
            return None
        value = self.hresult & 0xFFFFFFFF
        return value & 0xFFFF if value >> 16 == 0x8007 else None


class RemoteError(Exception):
    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node


class NodeUnreachable(RemoteError):
    """Connection refused or reset, a timeout, or the shell gone after a reboot: the node may come back."""


class CallTimedOut(NodeUnreachable):
    """The call did not finish before its deadline; it was stopped. Its outcome on the node is unknown."""


class AuthFailed(RemoteError):
    """The node refused the credentials (HTTP 401). Retrying will not help."""


class RemotingError(RemoteError):
    """Any other WinRM/PSRP failure."""


class CertificateRejected(RemotingError):
    """The node's HTTPS certificate did not validate (wrong name, unknown CA, expired). Retrying will not help."""


class CmdletFailed(RemoteError):
    """The call ran and reported errors; `errors` holds them, terminating ones first."""

    def __init__(self, node: str, call: str, errors: list[ErrorInfo]) -> None:
        first = errors[0]
        super().__init__(node, f"{call}: {first.message} [{first.fq_error_id}]")
        self.call = call
        self.errors = errors

    def has_win32(self, code: int) -> bool:
        """Whether an error carries this Win32 code: as its HResult, or only in its text (a cmdlet that wraps the
        code in a message, or a record whose exception lost its HResult on the way)."""
        texts = WIN32_TEXT.get(code, ())
        return any(e.win32_code == code or any(t in e.message.lower() for t in texts) for e in self.errors)

    def has_error_id(self, *ids: str) -> bool:
        return any(e.error_id in ids for e in self.errors)


# Messages Windows gives for the Win32 codes the upgrade acts on (winerror.h texts), lower case.
WIN32_TEXT: dict[int, tuple[str, ...]] = {
    5987: ("a clustered space is in a degraded condition",),
}
