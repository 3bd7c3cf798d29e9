<#
.SYNOPSIS
    Writes hci-upgrade's CAU Pre/PostUpdateScripts (WorkloadPolicy shut-down) on this node, at the path CAU is
    given for them.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; the two scripts' text is bound as parameters (hci-upgrade's own
    packaged files, hciupgrade/scripts/cau/), never text built from input, and written as it is. CAU runs a
    Pre/PostUpdateScript from a local path on each node (Invoke-CauRun's docs: a .ps1 path of at most 260
    characters). Rewriting the same text is harmless, so the call is idempotent.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $PreUpdateScript,
    [Parameter(Mandatory)] [string] $PostUpdateScript
)
$ErrorActionPreference = 'Stop'
$folder = Join-Path -Path $env:ProgramData -ChildPath 'hci-upgrade\cau'
New-Item -Path $folder -ItemType Directory -Force | Out-Null
Set-Content -LiteralPath (Join-Path $folder 'CauPreUpdate-StopWorkloads.ps1') -Value $PreUpdateScript -Encoding UTF8
Set-Content -LiteralPath (Join-Path $folder 'CauPostUpdate-StartWorkloads.ps1') -Value $PostUpdateScript -Encoding UTF8
Get-ChildItem -LiteralPath $folder -Filter '*.ps1' | Select-Object FullName, Length
