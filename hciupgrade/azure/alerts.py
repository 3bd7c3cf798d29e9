"""Alerts kept quiet while a run takes the cluster's nodes out one by one: an Azure Monitor alert processing rule
(Microsoft.AlertsManagement/actionRules, api-version 2021-08-08) that removes all action groups from alerts on the
cluster's resource, created before the first node and deleted at the end. A run that crashes leaves the rule: its
schedule ends with the window (effectiveUntil), and the next run's PUT and DELETE of the same name remove it.

Source: azure-rest-api-specs, specification/alertsmanagement/resource-manager/Microsoft.AlertsManagement/stable/
2021-08-08 (AlertProcessingRules.json and its example "Create or update a rule that removes all action groups from
all alerts on a specific VM during a one-off maintenance window"): a synchronous PUT answering 200 or 201, a
DELETE answering 200 or 204; location "Global"; scopes, actions [{actionType: RemoveAllActionGroups}], schedule
{effectiveFrom, effectiveUntil, timeZone}, enabled, description.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hciupgrade.azure.arm import ArmClient, ArmError
from hciupgrade.azure.target import AzureTarget

API_VERSION = "2021-08-08"
TIME = "%Y-%m-%dT%H:%M:%S"  # the schedule's times: no offset, in its timeZone


def rule_path(target: AzureTarget, cluster: str) -> str:
    group = f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}"
    return f"{group}/providers/Microsoft.AlertsManagement/actionRules/hci-upgrade-{cluster.lower()}"


def cluster_resource(target: AzureTarget, cluster: str) -> str:
    return (f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}/providers/"
            f"Microsoft.AzureStackHCI/clusters/{target.resource_name or cluster}")


def rule_body(target: AzureTarget, cluster: str, run_id: str, until: datetime,
              now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {"location": "Global", "properties": {
        "scopes": [cluster_resource(target, cluster)],
        "actions": [{"actionType": "RemoveAllActionGroups"}],
        "schedule": {"effectiveFrom": now.strftime(TIME), "effectiveUntil": until.strftime(TIME), "timeZone": "UTC"},
        "enabled": True,
        "description": f"hci-upgrade run {run_id}: planned node restarts of {cluster}; removed at the run's end"}}


def quiet(arm: ArmClient, target: AzureTarget, cluster: str, run_id: str, hours: float) -> None:
    """Create (or refresh) the rule for `hours` from now."""
    until = datetime.now(UTC) + timedelta(hours=hours)
    arm.request("PUT", rule_path(target, cluster), api_version=API_VERSION,
                json=rule_body(target, cluster, run_id, until))


def unquiet(arm: ArmClient, target: AzureTarget, cluster: str) -> None:
    """Delete the rule; one already gone is fine."""
    try:
        arm.request("DELETE", rule_path(target, cluster), api_version=API_VERSION)
    except ArmError as e:
        if e.status != 404:
            raise
