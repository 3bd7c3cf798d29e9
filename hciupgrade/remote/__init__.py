"""The only door to a node: PowerShell calls as data, over pypsrp."""

from hciupgrade.remote.calls import SWITCH, Call, Cmdlet, PackagedScript, Pipeline
from hciupgrade.remote.errors import (
    AuthFailed,
    CallTimedOut,
    CertificateRejected,
    CmdletFailed,
    ErrorInfo,
    NodeUnreachable,
    RemoteError,
    RemotingError,
)
from hciupgrade.remote.session import NodeSession, Result, Session

__all__ = [
    "SWITCH", "Call", "Cmdlet", "PackagedScript", "Pipeline", "AuthFailed", "CallTimedOut", "CertificateRejected",
    "CmdletFailed", "ErrorInfo", "NodeUnreachable", "RemoteError", "RemotingError", "NodeSession", "Result", "Session",
]
