<#
.SYNOPSIS
    Shows this node the fence of the run that now owns the cluster; with -TakeOver, moves a dead run's mark to it.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    Each run that takes the cluster's lock gets a fence: a number that grows with each takeover. It writes the
    fence here, under HKLM:\SOFTWARE\hci-upgrade-fence, on every node it reaches, before it acts on any; every
    script that changes a node refuses a run whose fence is older than the node's (DESIGN.md invariant 8), so a run
    that was frozen past its lease and wakes up can do nothing more. A fence older than the node's is refused
    (FencedOut): that caller is the stale one.
    -TakeOver names a run that paused this node and is known dead (its lease lapsed, its heartbeat stopped): its
    mark (PausedByRun, Fence) becomes this run's, so from now on only this run may restart, update or resume it.
    A mark of any other run is left as it is. Returns the fence key and the mark as they are now.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $RunId,
    [Parameter(Mandatory)] [ValidateRange(1, 9007199254740991)] [long] $Fence,
    [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $TakeOver
)
$ErrorActionPreference = 'Stop'
$fenceKey = 'HKLM:\SOFTWARE\hci-upgrade-fence'
$markKey = 'HKLM:\SOFTWARE\hci-upgrade'
$held = Get-ItemProperty -Path $fenceKey -ErrorAction SilentlyContinue
if ($held -and [long]$held.Fence -gt $Fence) {
    $record = [System.Management.Automation.ErrorRecord]::new(
        [System.InvalidOperationException]::new("$env:COMPUTERNAME is held by hci-upgrade run $($held.RunId) (fence $($held.Fence)), newer than run $RunId (fence $Fence); nothing was done."),
        'FencedOut', [System.Management.Automation.ErrorCategory]::PermissionDenied, $env:COMPUTERNAME)
    $PSCmdlet.ThrowTerminatingError($record)
}
$null = New-Item -Path $fenceKey -Force
$null = New-ItemProperty -Path $fenceKey -Name Fence -Value $Fence -PropertyType QWord -Force
$null = New-ItemProperty -Path $fenceKey -Name RunId -Value $RunId -Force
$mark = Get-ItemProperty -Path $markKey -ErrorAction SilentlyContinue
if ($TakeOver -and $mark -and $mark.PausedByRun -eq $TakeOver) {
    $null = New-ItemProperty -Path $markKey -Name PausedByRun -Value $RunId -Force
    $null = New-ItemProperty -Path $markKey -Name Fence -Value $Fence -PropertyType QWord -Force
}
Get-ItemProperty -Path $fenceKey, $markKey -ErrorAction SilentlyContinue
