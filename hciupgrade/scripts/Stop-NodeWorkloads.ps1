<#
.SYNOPSIS
    WorkloadPolicy shut-down: shuts down the VMs this node runs, before its drain, and keeps their names on the node.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    The names are written under HKLM:\SOFTWARE\hci-upgrade-workloads (StoppedVMs) before any VM is stopped, so a
    run that dies part-way, or the next run adopting the node, starts the same VMs again (Start-NodeWorkloads.ps1).
    A VM already off is not ours to start later and is not listed. Stop-VM -Force shuts the guest down (a locked
    console does not make it ask). Microsoft's current upgrade pages recommend shutting the VMs down "to prevent
    unexpected outages and damages to databases" (hciupgrade/targets.py).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9-]{0,14}$')] [string] $Name,
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
if (-not (Test-Path -Path $key)) { New-Item -Path $key -Force | Out-Null }
$listed = @((Get-ItemProperty -Path $key -ErrorAction SilentlyContinue).StoppedVMs | Where-Object { $_ })
$running = @(Get-ClusterGroup | Where-Object { [string]$_.GroupType -eq 'VirtualMachine' -and [string]$_.OwnerNode -eq $Name -and [string]$_.State -eq 'Online' })
$names = [string[]]@(@($listed) + @($running | ForEach-Object { $_.Name }) | Sort-Object -Unique)
Set-ItemProperty -Path $key -Name StoppedVMs -Value $names -Type MultiString
foreach ($group in $running) { Stop-VM -Name $group.Name -Force }
$names
