<#
.SYNOPSIS
    Runs an operator's Pre/PostUpdateScript that already lies on the node (CAU's -PreUpdateScript semantics).
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; the path is a bound parameter, never text built from input.
    A script that throws or exits non-zero fails the call, so a failing pre-script means the node is not updated.
    Run ID and fence: the run that owns the cluster; -Marked: the node must carry this run's mark as well.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z]:\\.+\.ps1$')] [string] $Path,
    [ValidateSet('Pre', 'Post')] [string] $Phase = 'Pre',
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
if (-not (Test-Path -LiteralPath $Path)) { throw "The $Phase-update script '$Path' does not exist on $env:COMPUTERNAME." }
$global:LASTEXITCODE = 0
& $Path
if ($LASTEXITCODE -ne 0) { throw "The $Phase-update script '$Path' exited with $LASTEXITCODE on $env:COMPUTERNAME." }
