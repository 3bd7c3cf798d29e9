<#
.SYNOPSIS
    WorkloadPolicy shut-down: starts again the VMs Stop-NodeWorkloads.ps1 shut down on this node, after its resume.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    Each VM listed under HKLM:\SOFTWARE\hci-upgrade-workloads (StoppedVMs) is started as a cluster role wherever
    it is now (Start-ClusterGroup: the failback policy may have left it on another node). The list keeps the VMs
    that would not start, so a rerun tries them again, and the call fails naming them; an empty list is removed.
#>
[CmdletBinding()]
param(
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
$key = 'HKLM:\SOFTWARE\hci-upgrade-workloads'
$names = @((Get-ItemProperty -Path $key -ErrorAction SilentlyContinue).StoppedVMs | Where-Object { $_ })
$left = @()
foreach ($vm in $names) {
    try { Start-ClusterGroup -Name $vm | Out-Null } catch { $left += "$vm ($($_.Exception.Message))" }
}
if ($left) {
    Set-ItemProperty -Path $key -Name StoppedVMs -Value ([string[]]@($left | ForEach-Object { ($_ -split ' ')[0] })) -Type MultiString
    throw "$env:COMPUTERNAME: these VMs did not start: $($left -join '; ')"
}
if (Test-Path -Path $key) { Remove-Item -Path $key -Recurse -Force }
[string[]]$names
