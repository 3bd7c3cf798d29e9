<#
.SYNOPSIS
    Runs Test-Cluster on this cluster and returns one object per test: Category, Test, Result.
.DESCRIPTION
    Shipped with hci-upgrade and sent as is; no parameter is built from input. Test-Cluster writes its report
    (C:\Windows\Cluster\Reports\Validation Report <date>.htm) and the validation data XML beside it; the script
    reads the XML's per-test results, so the orchestrator summarises data, never parses the report's HTML.
    [INFER] the XML layout (Channel elements of type Test, with Title, Category and Result values); verify on a
    real cluster and adjust the projection here only.
#>
[CmdletBinding()]
param()
$ErrorActionPreference = 'Stop'
$report = Test-Cluster -WarningAction SilentlyContinue
$data = Join-Path -Path $report.DirectoryName -ChildPath ($report.BaseName -replace '^Validation Report', 'Validation Data') | ForEach-Object { "$_.xml" }
[xml]$xml = Get-Content -LiteralPath $data -Raw
foreach ($test in $xml.SelectNodes("//Channel[@Type='Test']")) {
    [pscustomobject]@{
        Category = [string]$test.Category.Value
        Test     = [string]$test.Title.Value
        Result   = [string]$test.Result.Value
    }
}
