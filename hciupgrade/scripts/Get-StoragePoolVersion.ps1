<#
.SYNOPSIS
    The S2D pool's name and metadata version as a number.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; it takes no parameters. On a real node Get-StoragePool shows Version as
    the Storage module's friendly text ("Windows Server 2016 RS3" style: a `Get-StoragePool | Format-List *` of a
    real pool shows exactly that), so a client that reads `Version` as a number fails on every real pool. The
    number (MSFT_StoragePool.Version, UInt16; the environment checker wants 28 or more) is the CIM property, read
    here as the checker reads it: CimInstanceProperties['Version'].Value.
#>
[CmdletBinding()]
param()
$ErrorActionPreference = 'Stop'
foreach ($pool in Get-StoragePool -IsPrimordial $false) {
    [pscustomobject]@{
        FriendlyName = [string]$pool.FriendlyName
        Version      = [int]$pool.CimInstanceProperties['Version'].Value
        VersionText  = [string]$pool.Version
    }
}
