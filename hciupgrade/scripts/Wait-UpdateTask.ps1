<#
.SYNOPSIS
    Waits on the node, up to -Seconds, for the update task's installer to end; returns Get-ScheduledTaskInfo as it
    is then (LastTaskResult 0x41301 while the installer still runs).
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    setup's down-level phase runs 45 to 90 minutes: read from the orchestrator once a minute it costs a remote
    call a minute and up to a minute of latency at its end. Waiting here instead, reading the task every
    -EverySeconds on the node itself, answers within seconds of the end and with one call per -Seconds. It reads
    only; a call cut short (the session lost, the node restarting) changes nothing and is simply made again.
    0x41303 (SCHED_S_TASK_HAS_NOT_RUN) right after the start is not an end either.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidateSet('HciUpgrade-FeatureUpdate', 'HciUpgrade-CumulativeUpdate')] [string] $TaskName,
    [ValidateRange(1, 3600)] [int] $Seconds = 300,
    [ValidateRange(1, 60)] [int] $EverySeconds = 5
)
$ErrorActionPreference = 'Stop'
$deadline = (Get-Date).AddSeconds($Seconds)
do {
    $info = Get-ScheduledTaskInfo -TaskName $TaskName
    if ($info.LastTaskResult -notin 0x41301, 0x41303) { break }
    Start-Sleep -Seconds $EverySeconds
} while ((Get-Date) -lt $deadline)
$info
