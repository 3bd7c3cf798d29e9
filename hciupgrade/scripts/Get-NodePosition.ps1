<#
.SYNOPSIS
    What decides a node's next step, read on the node in one call: its build, hci-upgrade's mark, the cluster's
    view of the node and, with -TaskName, the update's scheduled task and its last result.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    Each object is written as its own cmdlet writes it, and hci-upgrade tells them apart as it would the cmdlets'
    answers: the two registry keys by their PSChildName, the node by its type (ClusterNode), the task by its CIM
    classes (MSFT_ScheduledTask, MSFT_TaskDynamicInfo). A missing mark, a node whose cluster service does not run
    yet and a task never registered write nothing (hci-upgrade then asks another node for the cluster's view).
    It reads only.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9-]{0,14}$')] [string] $Name,
    [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $TaskName
)
$ErrorActionPreference = 'Stop'
Get-ItemProperty -Path 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade' -ErrorAction SilentlyContinue
# a cluster service that does not run (yet) fails Get-ClusterNode with a terminating error: nothing is written
try { Get-ClusterNode -Name $Name } catch { }
if ($TaskName) {
    $task = Get-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    if ($task) {
        $task
        Get-ScheduledTaskInfo -TaskName $TaskName
    }
}
