<#
.SYNOPSIS
    Waits, up to -Seconds, until the cluster sees node -Name in one of -State; returns the node (Get-ClusterNode)
    as it is then.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    Run on another node of the cluster while -Name restarts: setup's offline phases keep a node away 30 to 60
    minutes, and asking for it from the orchestrator once a minute costs a call a minute and up to a minute of
    latency when it is back. Waiting here, reading the cluster every -EverySeconds, answers within seconds of the
    node's return with one call per -Seconds. It reads only.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9-]{0,14}$')] [string] $Name,
    [Parameter(Mandatory)] [ValidateSet('Up', 'Down', 'Paused', 'Joining')] [string[]] $State,
    [ValidateRange(1, 3600)] [int] $Seconds = 300,
    [ValidateRange(1, 60)] [int] $EverySeconds = 10
)
$ErrorActionPreference = 'Stop'
$deadline = (Get-Date).AddSeconds($Seconds)
do {
    $node = Get-ClusterNode -Name $Name
    if ([string]$node.State -in $State) { break }
    Start-Sleep -Seconds $EverySeconds
} while ((Get-Date) -lt $deadline)
$node
