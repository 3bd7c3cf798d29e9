<#
.SYNOPSIS
    Starts Cluster-Aware Updating's run on this cluster (its clustered role, -UpdateNow), or returns the run
    already in progress; never starts a second one.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; only the parameters below are bound, never text built from input.
    Invoke-CauRun stays attached to its coordinator for the whole run (hours) and must run outside the cluster;
    a node cannot host it through its own restart. CAU's own way to run on the cluster is its clustered role
    (self-updating mode), whose orchestrator fails over between nodes as they restart. So this script adds the
    role under hci-upgrade's group name (or reconfigures that role when an earlier run of ours left it), with the
    plug-in, its arguments and CAU's options, and starts a run now (Set-CauClusterRole -UpdateNow). A role that
    someone else configured is left alone: the call is refused (CauRoleNotOurs). hci-upgrade removes its role when
    the run has ended. Adding the role reaches the other nodes and Active Directory (its computer object): the
    session needs delegated credentials (CredSSP, or resource-based constrained delegation), proven beforehand by
    Test-SecondHop.ps1.
    Run ID and fence: the run that owns the cluster (DESIGN.md invariant 8), checked before anything changes.
    Output: Get-CauRun's objects (a RunState value, then the CauRun).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidateSet('Microsoft.RollingUpgradePlugin', 'Microsoft.HotfixPlugin')] [string] $Plugin,
    [ValidatePattern('^[A-Za-z]:\\')] [string] $PathToSetupMedia,
    [ValidatePattern('^\\\\[^\\]+\\[^\\]+')] [string] $HotfixRootFolderPath,
    [ValidateRange(0, 64)] [int] $MaxFailedNodes,
    [ValidateRange(1, 64)] [int] $MaxRetriesPerNode = 3,
    [string[]] $NodeOrder,
    [switch] $RequireAllNodesOnline,
    [ValidateRange(1, 1440)] [int] $RebootTimeoutMinutes = 15,
    [ValidateSet('Immediate', 'Policy', 'NoFailback')] [string] $FailbackMode = 'Immediate',
    [ValidatePattern('^[A-Za-z]:\\.+\.ps1$')] [string] $PreUpdateScript,
    [ValidatePattern('^[A-Za-z]:\\.+\.ps1$')] [string] $PostUpdateScript,
    [ValidateRange(1, 100000)] [int] $StopAfterMinutes,
    [ValidateRange(1, 100000)] [int] $WarnAfterMinutes,
    [ValidateRange(1, 100000)] [int] $SuspendClusterNodeTimeoutMinutes,
    [ValidateRange(1, 100000)] [int] $WaitForStorageRepairTimeoutMinutes,
    [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $GroupName = 'HciUpgrade-CAU',
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9-]{1,64}$')] [string] $RunId,
    [Parameter(Mandatory)] [ValidateRange(1, 9007199254740991)] [long] $Fence
)
$ErrorActionPreference = 'Stop'
# Ownership, proven in the same call as the action (DESIGN.md invariant 8): no newer run's fence here
$held = Get-ItemProperty -Path 'HKLM:\SOFTWARE\hci-upgrade-fence' -ErrorAction SilentlyContinue
if ($held -and [long]$held.Fence -gt $Fence) { $PSCmdlet.ThrowTerminatingError([System.Management.Automation.ErrorRecord]::new([System.InvalidOperationException]::new("$env:COMPUTERNAME is not held by hci-upgrade run $RunId (fence $Fence): a newer run holds it: run $($held.RunId), fence $($held.Fence); nothing was done."), 'FencedOut', [System.Management.Automation.ErrorCategory]::PermissionDenied, $env:COMPUTERNAME)) }

$run = @(Get-CauRun)
if ("$($run[0])" -ne 'RunNotInProgress') { return $run }  # followed, never restarted; RunFailed is the caller's to report

$arguments = if ($Plugin -eq 'Microsoft.RollingUpgradePlugin') {
    @{ WuConnected = 'false'; PathToSetupMedia = $PathToSetupMedia; UpdateClusterFunctionalLevel = 'false' }
} else {
    @{ HotfixRootFolderPath = $HotfixRootFolderPath; RequireSmbEncryption = 'true' }
}
$options = @{ CauPluginName = $Plugin; CauPluginArguments = $arguments; MaxRetriesPerNode = $MaxRetriesPerNode
              RebootTimeoutMinutes = $RebootTimeoutMinutes; FailbackMode = $FailbackMode; EnableFirewallRules = $true
              Force = $true }
foreach ($p in 'MaxFailedNodes', 'NodeOrder', 'PreUpdateScript', 'PostUpdateScript', 'SuspendClusterNodeTimeoutMinutes',
               'WaitForStorageRepairTimeoutMinutes') {
    if ($PSBoundParameters.ContainsKey($p)) { $options[$p] = $PSBoundParameters[$p] }
}
if ($RequireAllNodesOnline) { $options['RequireAllNodesOnline'] = $true }
if ($StopAfterMinutes) { $options['StopAfter'] = New-TimeSpan -Minutes $StopAfterMinutes }
if ($WarnAfterMinutes) { $options['WarnAfter'] = New-TimeSpan -Minutes $WarnAfterMinutes }

$role = Get-CauClusterRole -ErrorAction SilentlyContinue
$group = ($role | Where-Object Name -eq 'ResourceGroupName').Value
if (-not $role) {
    Add-CauClusterRole -GroupName $GroupName -DaysOfWeek Sunday -WeeksOfMonth 4 @options
} elseif ($group -eq $GroupName) {
    Set-CauClusterRole @options
} else {
    $PSCmdlet.ThrowTerminatingError([System.Management.Automation.ErrorRecord]::new([System.InvalidOperationException]::new("The cluster has a CAU clustered role configured by someone else ($group): its settings are not hci-upgrade's to change. Remove it (Remove-CauClusterRole), or use Engine: hci-upgrade."), 'CauRoleNotOurs', [System.Management.Automation.ErrorCategory]::ResourceExists, $group))
}
Set-CauClusterRole -UpdateNow -Force
Get-CauRun -WaitForStart | Out-Null
Get-CauRun
