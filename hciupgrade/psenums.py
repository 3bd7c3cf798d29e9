"""The .NET enums the upgrade reads, with their real names, values and type names.

Over PSRP an enum arrives as its name (ToString) plus its integer; a projected CIM property may arrive as either.
`parse` accepts both, so the cluster layer never cares which one a node sent. Values: reference/domain.md §3.
"""

from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.IntEnum)


class NodeState(enum.IntEnum):
    """CLUSTER_NODE_STATE."""

    Unknown = -1
    Up = 0
    Down = 1
    Paused = 2
    Joining = 3


class DrainStatus(enum.IntEnum):
    """CLUSTER_NODE_DRAIN_STATUS."""

    NotInitiated = 0
    InProgress = 1
    Completed = 2
    Failed = 3


class NodeStatusInformation(enum.IntFlag):
    """CLUSTER_NODE_STATUS (flags)."""

    Normal = 0
    Isolated = 0x1
    Quarantined = 0x2
    DrainInProgress = 0x4
    DrainCompleted = 0x8
    DrainFailed = 0x10
    AvoidPlacement = 0x20


class FailbackType(enum.IntEnum):
    """ResumeClusterNodeFailbackType (Resume-ClusterNode -Failback)."""

    NoFailback = 0
    Immediate = 1
    Policy = 2


class GroupState(enum.IntEnum):
    """CLUSTER_GROUP_STATE."""

    Unknown = -1
    Online = 0
    Offline = 1
    Failed = 2
    PartialOnline = 3
    Pending = 4


class GroupType(enum.IntEnum):
    """Cluster group types used here (WAC's enum)."""

    ClusterGroup = 1
    AvailableStorage = 2
    ClusterStoragePool = 5
    VirtualMachine = 111
    Unknown = 9999


class HealthStatus(enum.IntEnum):
    """MSFT_VirtualDisk / MSFT_StoragePool HealthStatus."""

    Healthy = 0
    Warning = 1
    Unhealthy = 2
    Unknown = 5


class OperationalStatus(enum.IntEnum):
    """MSFT_VirtualDisk OperationalStatus (an array on the wire). Microsoft's own values are compared by name."""

    Unknown = 0
    Other = 1
    OK = 2
    Degraded = 3
    Stressed = 4
    PredictiveFailure = 5
    Error = 6
    NonRecoverableError = 7
    Starting = 8
    Stopping = 9
    Stopped = 10
    InService = 11
    NoContact = 12
    LostCommunication = 13
    Aborted = 14
    Dormant = 15
    SupportingEntityInError = 16
    Completed = 17
    PowerMode = 18
    Detached = 0xD010
    Incomplete = 0xD011


class JobState(enum.IntEnum):
    """CIM_ConcreteJob JobState (MSFT_StorageJob)."""

    New = 2
    Starting = 3
    Running = 4
    Suspended = 5
    ShuttingDown = 6
    Completed = 7
    Terminated = 8
    Killed = 9
    Exception = 10
    Service = 11
    QueryPending = 12


class ProvisioningType(enum.IntEnum):
    Unknown = 0
    Thin = 1
    Fixed = 2


class ScheduledTaskState(enum.IntEnum):
    """MSFT_ScheduledTask State."""

    Unknown = 0
    Disabled = 1
    Queued = 2
    Ready = 3
    Running = 4


class CauRunState(enum.IntEnum):
    """Get-CauRun's first object. Values seen: RunNotInProgress, RunInProgress, RunFailed [others UNVERIFIED]."""

    RunNotInProgress = 0
    RunInProgress = 1
    RunFailed = 2


class CauNodeStatus(enum.IntEnum):
    """A CAU NodeStatusNotification's Status (reference/domain.md §5.4): Waiting and Scanning are seen in
    Microsoft's sample and WAC's script; the names of the other phases are [UNVERIFIED], as are all the integers.
    A client reads the name."""

    Waiting = 0
    Scanning = 1
    Staging = 2
    Suspending = 3
    Installing = 4
    Restarting = 5
    Resuming = 6
    WaitingForStorageRepair = 7


class CauResultStatus(enum.IntEnum):
    """A CAU report's ClusterResult.Status and each NodeResult's Status: Succeeded, PartiallyFailed, Failed and
    Canceled as Microsoft's TSG scripts read them (§5.5; the integers [UNVERIFIED])."""

    Succeeded = 0
    PartiallyFailed = 1
    Failed = 2
    Canceled = 3


class VMState(enum.IntEnum):
    """Microsoft.HyperV.PowerShell.VMState, every name Hyper-V's module defines (the same list, in this order, as
    Microsoft's SdnDiagnostics module restates it in enum/VMState.ps1). The numbers below 32768 are
    Msvm_ComputerSystem.EnabledState's; the others are [INFER] from its DMTF-proposed range (Saving 32773, Pausing
    32776 and Resuming 32777 as Win32_RDMSVirtualDesktop documents them)."""

    Other = 1
    Running = 2
    Off = 3
    Stopping = 4
    Saved = 6
    Paused = 9
    Starting = 10
    Reset = 11
    Saving = 32773
    Pausing = 32776
    Resuming = 32777
    FastSaved = 32779
    FastSaving = 32780
    RunningCritical = 32781
    OffCritical = 32782
    StoppingCritical = 32783
    SavedCritical = 32784
    PausedCritical = 32785
    StartingCritical = 32786
    ResetCritical = 32787
    SavingCritical = 32788
    PausingCritical = 32789
    ResumingCritical = 32790
    FastSavedCritical = 32791
    FastSavingCritical = 32792


class ReadinessStatus(enum.IntEnum):
    """EnvironmentReadinessTestResult.Status. SUCCESS=0 and FAILURE=1 are seen; WARNING/ERROR [UNVERIFIED]."""

    SUCCESS = 0
    FAILURE = 1
    WARNING = 2
    ERROR = 3


class ReadinessSeverity(enum.IntEnum):
    """EnvironmentReadinessTestResult.Severity (ResultSeverity)."""

    INFORMATIONAL = 0
    WARNING = 1
    CRITICAL = 2
    HIDDEN = 3


# The .NET type name each enum has on the wire (FailoverClusters types; CIM enums are projected by the
# Storage and ScheduledTasks modules' type data).
TYPE_NAMES: dict[type[enum.IntEnum], str] = {
    NodeState: "Microsoft.FailoverClusters.PowerShell.ClusterNodeState",
    DrainStatus: "Microsoft.FailoverClusters.PowerShell.ClusterNodeDrainStatus",
    NodeStatusInformation: "Microsoft.FailoverClusters.PowerShell.ClusterNodeStatusInformation",
    GroupState: "Microsoft.FailoverClusters.PowerShell.ClusterGroupState",
    GroupType: "Microsoft.FailoverClusters.PowerShell.GroupType",
    FailbackType: "Microsoft.FailoverClusters.PowerShell.ResumeClusterNodeFailbackType",
    HealthStatus: "Microsoft.PowerShell.Cmdletization.GeneratedTypes.VirtualDisk.HealthStatus",
    OperationalStatus: "Microsoft.PowerShell.Cmdletization.GeneratedTypes.VirtualDisk.OperationalStatus",
    JobState: "Microsoft.PowerShell.Cmdletization.GeneratedTypes.StorageJob.JobState",
    ProvisioningType: "Microsoft.PowerShell.Cmdletization.GeneratedTypes.VirtualDisk.ProvisioningType",
    ScheduledTaskState: "Microsoft.PowerShell.Cmdletization.GeneratedTypes.ScheduledTask.StateEnum",
    CauRunState: "Microsoft.ClusterAwareUpdating.RunState",
    CauNodeStatus: "Microsoft.ClusterAwareUpdating.NodeStatus",
    CauResultStatus: "Microsoft.ClusterAwareUpdating.ResultStatus",
    VMState: "Microsoft.HyperV.PowerShell.VMState",
    ReadinessStatus: "Microsoft.EnvironmentReadiness.Client.Models.TestStatus",
    ReadinessSeverity: "Microsoft.EnvironmentReadiness.Client.Models.ResultSeverity",
}


def parse(enum_type: type[E], value: object) -> E:
    """Accept an enum's name (any case) or its integer, as a node may send either."""
    if isinstance(value, enum_type):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a {enum_type.__name__}")
    if isinstance(value, int):
        return enum_type(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return enum_type(int(text))
    key = text.replace(" ", "").replace("-", "").lower()
    for member in enum_type:
        if member.name.lower() == key:
            return member
    allowed = ", ".join(m.name for m in enum_type)
    raise ValueError(f"{value!r} is not a {enum_type.__name__} (allowed: {allowed})")
