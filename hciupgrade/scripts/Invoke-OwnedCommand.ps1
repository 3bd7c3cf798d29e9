<#
.SYNOPSIS
    Runs one cmdlet that changes the cluster or this node, only while the calling run still owns them.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; the cmdlet is one of a fixed set and its parameters are bound, never
    text built from input. Ownership is proven in the same call as the action (DESIGN.md invariant 8): the node
    carries no fence newer than the run's (a newer run took the cluster over while this one was away: frozen,
    suspended, cut off), and with -Marked the node carries this run's mark (a restart, stopping an installer).
    Otherwise the call is refused with FencedOut or NotOurPause and nothing is done.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)]
    [ValidateSet('Restart-Computer', 'Stop-ScheduledTask', 'Update-ClusterFunctionalLevel', 'Update-StoragePool',
                 'Stop-VM', 'Start-VM', 'Update-VMVersion', 'Stop-Cluster', 'Start-Cluster', 'Set-Service',
                 'Start-ClusterResource', 'Stop-ClusterResource', 'Start-Service', 'Remove-ClusterGroup',
                 'Stop-CauRun', 'Remove-CauClusterRole')]
    [string] $Command,
    [string] $Name,
    [string] $TaskName,
    [string] $FriendlyName,
    [ValidateSet('Automatic', 'Disabled')] [string] $StartupType,
    [switch] $Force,
    [switch] $RemoveResources,
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $RunId,
    [Parameter(Mandatory)] [ValidateRange(1, 9007199254740991)] [long] $Fence,
    [switch] $Marked
)
$ErrorActionPreference = 'Stop'
# Ownership, proven in the same call as the action (DESIGN.md invariant 8): no newer run's fence here; with -Marked, this run's mark
$held = Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade-fence' -ErrorAction SilentlyContinue
$mark = Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade' -ErrorAction SilentlyContinue
$denied = if ($held -and [long]$held.Fence -gt $Fence) { 'FencedOut', "a newer run holds it: run $($held.RunId), fence $($held.Fence)" } elseif ($Marked -and -not ($mark -and $mark.PausedByRun -eq $RunId)) { 'NotOurPause', 'it does not carry this run''s mark' }
if ($denied) { $PSCmdlet.ThrowTerminatingError([System.Management.Automation.ErrorRecord]::new([System.InvalidOperationException]::new("$env:COMPUTERNAME is not held by hci-upgrade run $RunId (fence $Fence): $($denied[1]); nothing was done."), $denied[0], [System.Management.Automation.ErrorCategory]::PermissionDenied, $env:COMPUTERNAME)) }
$splat = @{ ErrorAction = 'Stop' }
foreach ($p in 'Name', 'TaskName', 'FriendlyName', 'StartupType', 'Force', 'RemoveResources') {
    if ($PSBoundParameters.ContainsKey($p)) { $splat[$p] = $PSBoundParameters[$p] }
}
if ($Command -eq 'Update-StoragePool') { $splat['Confirm'] = $false }  # no prompt a remote session could answer
& $Command @splat
