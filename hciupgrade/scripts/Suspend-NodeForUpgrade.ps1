<#
.SYNOPSIS
    Pauses and drains this node for its upgrade, only when it is Up and paused by nobody and every other node is
    Up; marks the pause as hci-upgrade's before making it.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    The mark is the registry key HKLM:\SOFTWARE\hci-upgrade on the node itself (PausedByRun, PausedBy, PausedAt),
    written before Suspend-ClusterNode and removed if the suspend fails, the way kured annotates a node before it
    cordons it. After a lost answer or a crash, a Paused node with this run's mark is hci-upgrade's; a Paused node
    without it is someone else's and is never drained, updated, restarted or resumed by hci-upgrade.
    A node already paused by the same run (its mark) is drained again (a drain that failed, -ForceDrain); a drain
    of ours in progress is only returned.
    Fencing (DESIGN.md invariant 8): the node keeps the newest fence any run of hci-upgrade has shown it under
    HKLM:\SOFTWARE\hci-upgrade-fence. A run whose fence is older was taken over while it was away (frozen, cut off):
    it is refused here, in the same call as the pause, and nothing is done; a newer fence is written here.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9-]{0,14}$')] [string] $Name,
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $RunId,
    [Parameter(Mandatory)] [ValidateRange(1, 9007199254740991)] [long] $Fence,
    [switch] $ForceDrain
)
$ErrorActionPreference = 'Stop'
$key = 'HKLM:\SOFTWARE\hci-upgrade'
$fenceKey = 'HKLM:\SOFTWARE\hci-upgrade-fence'
$held = Get-ItemProperty -Path $fenceKey -ErrorAction SilentlyContinue
if ($held -and [long]$held.Fence -gt $Fence) {
    $record = [System.Management.Automation.ErrorRecord]::new(
        [System.InvalidOperationException]::new("$Name is held by hci-upgrade run $($held.RunId) (fence $($held.Fence)), newer than run $RunId (fence $Fence); nothing was done."),
        'FencedOut', [System.Management.Automation.ErrorCategory]::PermissionDenied, $Name)
    $PSCmdlet.ThrowTerminatingError($record)
}
$node = Get-ClusterNode -Name $Name
$mark = Get-ItemProperty -Path $key -ErrorAction SilentlyContinue
$ours = $mark -and $mark.PausedByRun -eq $RunId
if ([string]$node.State -ne 'Up' -and -not ([string]$node.State -eq 'Paused' -and $ours)) {
    $who = if ($mark) { "hci-upgrade run $($mark.PausedByRun) ($($mark.PausedBy), $($mark.PausedAt))" } else { 'someone else (no hci-upgrade mark)' }
    $record = [System.Management.Automation.ErrorRecord]::new(
        [System.InvalidOperationException]::new("$Name is $($node.State), paused by $who; hci-upgrade does not take over a pause that is not its own."),
        'NodeNotUp', [System.Management.Automation.ErrorCategory]::ResourceBusy, $Name)
    $PSCmdlet.ThrowTerminatingError($record)
}
$away = @(Get-ClusterNode | Where-Object { $_.Name -ne $Name -and [string]$_.State -ne 'Up' })
if ($away -and -not $ours) {  # the gate again, in the same call as the pause: nobody can slip in between
    $record = [System.Management.Automation.ErrorRecord]::new(
        [System.InvalidOperationException]::new("$Name is not paused: node $($away[0].Name) is $($away[0].State); one node out of service at a time."),
        'OtherNodeNotUp', [System.Management.Automation.ErrorCategory]::ResourceUnavailable, $Name)
    $PSCmdlet.ThrowTerminatingError($record)
}
if (-not $held -or [long]$held.Fence -lt $Fence) {  # this run's fence, newest from now on
    $null = New-Item -Path $fenceKey -Force
    $null = New-ItemProperty -Path $fenceKey -Name Fence -Value $Fence -PropertyType QWord -Force
    $null = New-ItemProperty -Path $fenceKey -Name RunId -Value $RunId -Force
}
if (-not $ours) {
    $null = New-Item -Path $key -Force
    $null = New-ItemProperty -Path $key -Name PausedByRun -Value $RunId -Force
    $null = New-ItemProperty -Path $key -Name PausedBy -Value "$env:USERDOMAIN\$env:USERNAME" -Force
    $null = New-ItemProperty -Path $key -Name PausedAt -Value ([datetime]::UtcNow.ToString('o')) -Force
    $null = New-ItemProperty -Path $key -Name Fence -Value $Fence -PropertyType QWord -Force
}
if ($ours -and [string]$node.DrainStatus -eq 'InProgress' -and -not $ForceDrain) { return $node }  # only watch it
try {
    Suspend-ClusterNode -Name $Name -Drain -ForceDrain:$ForceDrain
} catch {
    if (-not $ours) { Remove-Item -Path $key -Recurse -Force -ErrorAction SilentlyContinue }
    throw
}
