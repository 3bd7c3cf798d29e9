<#
.SYNOPSIS
    Proves that a command run in this node's session can reach another node (the "second hop").
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; the other node's name is a bound parameter, never text built from
    input. Test-Cluster, Start-Cluster and CAU reach every node from the one they run on; in a remote session that
    needs delegated credentials (CredSSP, or resource-based constrained delegation), and without them Windows
    refuses the second connection: Access is denied (PSRemotingTransportException). hci-upgrade runs this before
    anything irreversible and refuses up front, naming the fix, when it fails. It changes nothing.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$')] [string] $Name
)
$ErrorActionPreference = 'Stop'
Invoke-Command -ComputerName $Name -ScriptBlock { [pscustomobject]@{ ComputerName = $env:COMPUTERNAME } }
