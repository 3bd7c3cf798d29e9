<#
.SYNOPSIS
    The preflight's reads of one node in one call: its build, the update's prerequisites (Remote Shutdown firewall
    rules, a restart pending, the automatic-update policy), AKS on HCI, the target's registry values, the media or
    the update package, with -Adapters the physical NICs' drivers, and with -TaskName the update's scheduled task.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    Writes the CurrentVersion key as Get-ItemProperty writes it, then one object (type name
    HciUpgrade.Prerequisites) whose properties are plain values or arrays of them: remoting serialises nested
    objects one level deep only, so each answer is reduced here to what the preflight reads. A read that fails
    leaves its property empty, with the error's message beside it where the preflight names it (MediaError,
    PackageError). The task, when it exists, is written last as Get-ScheduledTask and Get-ScheduledTaskInfo write it
    (setup's first phase already run on a node in service shows there). It reads only.
#>
[CmdletBinding()]
param(
    [ValidatePattern('^[A-Za-z]:\\')] [string] $SetupPath,
    [ValidatePattern('^[A-Za-z]:\\')] [string] $PackagePath,
    [ValidatePattern('^HKLM:\\')] [string[]] $RegistryPath = @(),
    [ValidatePattern('^[A-Za-z0-9_]{1,128}$')] [string[]] $RegistryName = @(),
    [switch] $Adapters,
    [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $TaskName
)
$ErrorActionPreference = 'Stop'
Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
# the Remote Shutdown group by its indirect string: display names are localised (reference/domain.md §5)
$rules = @(Get-NetFirewallRule -Group '@firewallapi.dll,-36751' -ErrorAction SilentlyContinue)
$flagged = @(Test-Path -Path 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending',
    'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired')
$renames = Get-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control\Session Manager' -Name PendingFileRenameOperations -ErrorAction SilentlyContinue
$au = Get-ItemProperty -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\WindowsUpdate\AU' -ErrorAction SilentlyContinue
$values = for ($i = 0; $i -lt $RegistryName.Count; $i++) {
    $read = Get-ItemProperty -Path $RegistryPath[$i] -Name $RegistryName[$i] -ErrorAction SilentlyContinue
    if ($read) { $read.($RegistryName[$i]) } else { $null }
}
$media, $mediaError = $null, $null
if ($SetupPath) {
    try { $media = [string](Get-WindowsImage -ImagePath (Join-Path $SetupPath 'sources\install.wim') -Index 1).Version }
    catch { $mediaError = $_.Exception.Message }
}
$hash, $packageError = $null, $null
if ($PackagePath) {
    try { $hash = (Get-FileHash -Path $PackagePath -Algorithm SHA256).Hash } catch { $packageError = $_.Exception.Message }
}
$nics = if ($Adapters) { @(Get-NetAdapter -Physical) } else { @() }
[pscustomobject]@{
    PSTypeName             = 'HciUpgrade.Prerequisites'
    FirewallRulesEnabled   = [string[]]@($rules | ForEach-Object { [string]$_.Enabled })
    RestartFlagged         = [bool[]]$flagged
    PendingFileRenames     = [bool]($renames -and $renames.PendingFileRenameOperations)
    NoAutoUpdate           = if ($au) { [string]$au.NoAutoUpdate } else { $null }
    AUOptions              = if ($au) { [string]$au.AUOptions } else { $null }
    AksHci                 = @(Get-Module -Name AksHci -ListAvailable).Count -gt 0
    RegistryValues         = @($values)
    MediaVersion           = $media
    MediaError             = $mediaError
    PackageHash            = $hash
    PackageError           = $packageError
    AdapterNames           = [string[]]@($nics | ForEach-Object { $_.Name })
    AdapterDriverProviders = [string[]]@($nics | ForEach-Object { $_.DriverProvider })
    AdapterDriverVersions  = [string[]]@($nics | ForEach-Object { $_.DriverVersionString })
}
if ($TaskName) {
    $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($task) {
        $task
        Get-ScheduledTaskInfo -TaskName $TaskName
    }
}
