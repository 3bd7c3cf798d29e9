<#
.SYNOPSIS
    Registers the scheduled task that runs Windows setup's down-level phase for the 23H2 feature update.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    The task runs setup.exe from the extracted 23H2 media (the same local path on every node, as CAU's
    RollingUpgradePlugin requires) with /NoReboot, so the orchestrator decides when the node restarts:
    -Start (or Start-ScheduledTask) starts it, Get-ScheduledTaskInfo reports LastTaskResult (setup's exit code).
    A task that is already running is left alone, so the call is idempotent.
    Run ID and fence: the run that owns the cluster; -Marked: the node must carry this run's mark as well.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z]:\\')] [string] $SetupPath,
    [string] $TaskName = 'HciUpgrade-FeatureUpdate',
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $RunId,
    [Parameter(Mandatory)] [ValidateRange(1, 9007199254740991)] [long] $Fence,
    [switch] $Marked,
    [switch] $Start
)
$ErrorActionPreference = 'Stop'
# Ownership, proven in the same call as the action (DESIGN.md invariant 8): no newer run's fence here; with -Marked, this run's mark
$held = Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade-fence' -ErrorAction SilentlyContinue
$mark = Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade' -ErrorAction SilentlyContinue
$denied = if ($held -and [long]$held.Fence -gt $Fence) { 'FencedOut', "a newer run holds it: run $($held.RunId), fence $($held.Fence)" } elseif ($Marked -and -not ($mark -and $mark.PausedByRun -eq $RunId)) { 'NotOurPause', 'it does not carry this run''s mark' }
if ($denied) { $PSCmdlet.ThrowTerminatingError([System.Management.Automation.ErrorRecord]::new([System.InvalidOperationException]::new("$env:COMPUTERNAME is not held by hci-upgrade run $RunId (fence $Fence): $($denied[1]); nothing was done."), $denied[0], [System.Management.Automation.ErrorCategory]::PermissionDenied, $env:COMPUTERNAME)) }
$setup = Join-Path -Path $SetupPath -ChildPath 'setup.exe'
if (-not (Test-Path -LiteralPath $setup)) {
    throw "setup.exe not found under '$SetupPath': copy the extracted 23H2 media there first."
}
$existing = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
if ($existing -and $existing.State -eq 'Running') { return $existing }
$arguments = '/auto upgrade /quiet /eula accept /dynamicupdate disable /noreboot /copylogs C:\Windows\Logs\HciUpgrade'
$action = New-ScheduledTaskAction -Execute $setup -Argument $arguments
$principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
$settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit (New-TimeSpan -Hours 4) -AllowStartIfOnBatteries
$null = Register-ScheduledTask -TaskName $TaskName -Action $action -Principal $principal -Settings $settings -Force
if ($Start) { Start-ScheduledTask -TaskName $TaskName }  # -Start: registered and started in one call
Get-ScheduledTask -TaskName $TaskName
