<#
.SYNOPSIS
    The cluster's nodes, virtual disks, storage jobs and storage pool, as the four cmdlets write them, in one call.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; it takes no parameters. The gate before every drain and each wait for
    storage read all four at once: one round trip instead of four on the run's critical path. The objects keep their
    own type names (ClusterNode, MSFT_VirtualDisk, MSFT_StorageJob, MSFT_StoragePool), which is how hci-upgrade
    tells them apart. A node whose cluster service is not running fails here as Get-ClusterNode fails there.
#>
[CmdletBinding()]
param()
$ErrorActionPreference = 'Stop'
Get-ClusterNode
Get-VirtualDisk
Get-StorageJob
Get-StoragePool -IsPrimordial $false
