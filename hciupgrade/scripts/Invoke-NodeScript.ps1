<#
.SYNOPSIS
    Runs an operator's Pre/PostUpdateScript that already lies on the node (CAU's -PreUpdateScript semantics).
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; the path is a bound parameter, never text built from input.
    A script that throws or exits non-zero fails the call, so a failing pre-script means the node is not updated.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z]:\\.+\.ps1$')] [string] $Path,
    [ValidateSet('Pre', 'Post')] [string] $Phase = 'Pre'
)
$ErrorActionPreference = 'Stop'
if (-not (Test-Path -LiteralPath $Path)) { throw "The $Phase-update script '$Path' does not exist on $env:COMPUTERNAME." }
$global:LASTEXITCODE = 0
& $Path
if ($LASTEXITCODE -ne 0) { throw "The $Phase-update script '$Path' exited with $LASTEXITCODE on $env:COMPUTERNAME." }
