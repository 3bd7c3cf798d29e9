<#
.SYNOPSIS
    CAU's PostUpdateScript under WorkloadPolicy shut-down: starts the VMs CauPreUpdate-StopWorkloads.ps1 shut down
    on this node, wherever the cluster has them now.
.DESCRIPTION
    Shipped with hci-upgrade; Install-CauUpdateScripts.ps1 writes it on every node and hci-upgrade names it as
    CAU's -PostUpdateScript (CAU runs it after the node's resume). It takes no parameters. A VM that does not
    start stays listed and the script fails, so CAU reports the node and hci-upgrade names the VM.
#>
$ErrorActionPreference = 'Stop'
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
