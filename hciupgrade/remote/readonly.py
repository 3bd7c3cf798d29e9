"""A session that can only read: the survey's door to a node. Every call is checked against an allow-list before it
is sent (cmdlets that read, and the packaged scripts that only read); anything else is refused here and never
reaches the node. What each call answered is kept, as plain data with its .NET type names, for the survey's raw
answers (no credential is ever asked of a node, so none can be in them)."""

from __future__ import annotations

from typing import Any

from hciupgrade.remote.calls import Call, Cmdlet, PackagedScript, Pipeline

READ_CMDLETS = frozenset({
    "Get-Cluster", "Get-ClusterNode", "Get-ClusterGroup", "Get-ClusterQuorum", "Get-ClusterSharedVolume",
    "Get-StoragePool", "Get-VirtualDisk", "Get-StorageJob", "Get-VM", "Get-VMHostSupportedVersion",
    "Get-ItemProperty", "Test-Path", "Get-NetFirewallRule", "Get-CauRun", "Get-SRGroup", "Get-WindowsImage",
    "Get-ScheduledTask", "Get-ScheduledTaskInfo", "Get-FileHash", "Get-Service",
})
READ_SCRIPTS = frozenset({"Get-ClusterHealth.ps1", "Get-StoragePoolVersion.ps1", "Test-SecondHop.ps1",
                          "Get-UpgradePrerequisites.ps1", "Get-NodePosition.ps1"})
NEVER = frozenset({"WhatIf", "Confirm"})  # a read has no use for them; a change in disguise might


class NotReadOnly(Exception):
    """A call that is not on the read-only allow-list: refused before it is sent."""


def check_read_only(call: Call) -> None:
    commands = call.commands if isinstance(call, Pipeline) else (call,)
    for command in commands:
        if isinstance(command, PackagedScript):
            allowed = command.filename in READ_SCRIPTS
        else:
            allowed = isinstance(command, Cmdlet) and command.name in READ_CMDLETS \
                and not NEVER & set(command.parameters)
        if not allowed:
            raise NotReadOnly(f"{command}: not a read; the survey sends only what it may (remote/readonly.py)")


class ReadOnlySession:
    """Wraps a node's session: refuses anything but a read, keeps what each read answered."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.answers: list[dict[str, Any]] = []

    @property
    def call_seconds(self) -> list[float]:
        return getattr(self.inner, "call_seconds", [])

    def run(self, call: Call, *, timeout: float | None = None) -> Any:
        check_read_only(call)
        result = self.inner.run(call, timeout=timeout)
        self.answers.append({"call": str(call), "objects": result.objects, "types": [list(t) for t in result.types],
                             "errors": [{"message": e.message, "error_id": e.fq_error_id} for e in result.errors]})
        return result

    def reset(self, *, graceful: bool = True) -> None:
        self.inner.reset(graceful=graceful)

    def close(self) -> None:
        self.inner.close()
