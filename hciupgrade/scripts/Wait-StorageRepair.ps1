<#
.SYNOPSIS
    Waits, up to -Seconds, until no storage job is active (with -Settled: and every virtual disk and the pool are
    Healthy again); returns the storage jobs (with -Settled: the cluster's nodes, virtual disks, storage jobs and
    pool) as they are then.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    After a node's resume, Storage Spaces Direct resyncs for minutes to hours; asking for the jobs from the
    orchestrator every few seconds costs a call a poll and up to a poll of latency when the repair ends. Waiting
    here, reading every -EverySeconds, answers within seconds of the end with one call per -Seconds. With -Settled
    the output is Get-ClusterHealth.ps1's: the objects keep their own type names (ClusterNode, MSFT_VirtualDisk,
    MSFT_StorageJob, MSFT_StoragePool). It reads only.
#>
[CmdletBinding()]
param(
    [ValidateRange(1, 3600)] [int] $Seconds = 300,
    [ValidateRange(1, 60)] [int] $EverySeconds = 10,
    [switch] $Settled
)
$ErrorActionPreference = 'Stop'
# JobState values of a job that has not ended (MSFT_StorageJob; hciupgrade/upgrade/gates.py ACTIVE_JOB_STATES)
$active = 'New', 'Starting', 'Running', 'Suspended', 'ShuttingDown', 'QueryPending', 'Service'
$deadline = (Get-Date).AddSeconds($Seconds)
do {
    $busy = @(Get-StorageJob | Where-Object { [string]$_.JobState -in $active }).Count -gt 0
    if (-not $busy -and $Settled) {
        $busy = @(Get-VirtualDisk | Where-Object {
            [string]$_.HealthStatus -ne 'Healthy' -or @($_.OperationalStatus | Where-Object { [string]$_ -ne 'OK' }).Count -gt 0
        }).Count -gt 0 -or @(Get-StoragePool -IsPrimordial $false | Where-Object { [string]$_.HealthStatus -ne 'Healthy' }).Count -gt 0
    }
    if (-not $busy) { break }
    Start-Sleep -Seconds $EverySeconds
} while ((Get-Date) -lt $deadline)
if ($Settled) {  # what the verdict reads: nodes, virtual disks and the pool too (without -Settled, the jobs only)
    Get-ClusterNode
    Get-VirtualDisk
    Get-StoragePool -IsPrimordial $false
}
Get-StorageJob
