<#
.SYNOPSIS
    CAU's PreUpdateScript under WorkloadPolicy shut-down: shuts down the VMs this node runs, before CAU pauses and
    drains it, and keeps their names on the node.
.DESCRIPTION
    Shipped with hci-upgrade; Install-CauUpdateScripts.ps1 writes it on every node and hci-upgrade names it as
    CAU's -PreUpdateScript (CAU runs it on each node before the pause; a failing pre-script means the node is not
    updated: Invoke-CauRun's docs). It takes no parameters. The names are written under
    HKLM:\SOFTWARE\hci-upgrade-workloads (StoppedVMs) before any VM is stopped, the same list
    Stop-NodeWorkloads.ps1 keeps, so CauPostUpdate-StartWorkloads.ps1 (or hci-upgrade itself after a failure)
    starts the same VMs again. Microsoft's current upgrade pages recommend shutting the VMs down; live migration
    between nodes on different builds is what practitioners report failing.
#>
$ErrorActionPreference = 'Stop'
$key = 'HKLM:\SOFTWARE\hci-upgrade-workloads'
if (-not (Test-Path -Path $key)) { New-Item -Path $key -Force | Out-Null }
$listed = @((Get-ItemProperty -Path $key -ErrorAction SilentlyContinue).StoppedVMs | Where-Object { $_ })
$running = @(Get-ClusterGroup | Where-Object { [string]$_.GroupType -eq 'VirtualMachine' -and [string]$_.OwnerNode -eq $env:COMPUTERNAME -and [string]$_.State -eq 'Online' })
$names = [string[]]@(@($listed) + @($running | ForEach-Object { $_.Name }) | Sort-Object -Unique)
Set-ItemProperty -Path $key -Name StoppedVMs -Value $names -Type MultiString
foreach ($group in $running) { Stop-VM -Name $group.Name -Force }
