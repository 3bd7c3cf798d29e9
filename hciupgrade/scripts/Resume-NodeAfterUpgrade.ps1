<#
.SYNOPSIS
    Resumes this node if hci-upgrade's run paused it (its mark), then removes the mark.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    A node paused by someone else (no mark, or another run's) is refused and left as it is. A node already Up
    loses a stale mark of this run and is returned as it is, so the call is idempotent. A run whose fence is older
    than the node's (it was taken over while away) is refused before anything is done (DESIGN.md invariant 8).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9-]{0,14}$')] [string] $Name,
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $RunId,
    [Parameter(Mandatory)] [ValidateRange(1, 9007199254740991)] [long] $Fence,
    [ValidateSet('Immediate', 'Policy', 'NoFailback')] [string] $Failback = 'Immediate'
)
$ErrorActionPreference = 'Stop'
$key = 'HKLM:\SOFTWARE\hci-upgrade'
$mark = Get-ItemProperty -Path $key -ErrorAction SilentlyContinue
$held = Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade-fence' -ErrorAction SilentlyContinue
if ($held -and [long]$held.Fence -gt $Fence) {
    $record = [System.Management.Automation.ErrorRecord]::new(
        [System.InvalidOperationException]::new("$Name is held by hci-upgrade run $($held.RunId) (fence $($held.Fence)), newer than run $RunId (fence $Fence); nothing was done."),
        'FencedOut', [System.Management.Automation.ErrorCategory]::PermissionDenied, $Name)
    $PSCmdlet.ThrowTerminatingError($record)
}
$node = Get-ClusterNode -Name $Name
if ([string]$node.State -eq 'Paused') {
    if (-not $mark -or $mark.PausedByRun -ne $RunId) {
        $record = [System.Management.Automation.ErrorRecord]::new(
            [System.InvalidOperationException]::new("$Name is paused, but not by hci-upgrade run $RunId; it is left paused."),
            'NotOurPause', [System.Management.Automation.ErrorCategory]::PermissionDenied, $Name)
        $PSCmdlet.ThrowTerminatingError($record)
    }
    $node = Resume-ClusterNode -Name $Name -Failback $Failback
}
if ($mark -and $mark.PausedByRun -eq $RunId) { Remove-Item -Path $key -Recurse -Force }
$node
