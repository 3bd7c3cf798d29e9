"""The ARM resources the solution upgrade reads and writes (Microsoft.AzureStackHCI 2024-04-01, reference/anchors.md
2.2), as pydantic models. Enums are open: the service adds values (previews add update states), so a value is a
string, kept as sent; the known values are listed beside each field for the code that compares them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "2024-04-01"
ARC_API_VERSION = "2024-07-10"  # Microsoft.HybridCompute
KEY_VAULT_API_VERSION = "2023-07-01"  # Microsoft.KeyVault (control plane: the secret's existence, not its value)

UPDATE_STATES = ("HasPrerequisite", "Obsolete", "Ready", "NotApplicableBecauseAnotherUpdateIsInProgress", "Preparing",
                 "Installing", "Installed", "PreparationFailed", "InstallationFailed", "Invalid", "Recalled",
                 "Downloading", "DownloadFailed", "HealthChecking", "HealthCheckFailed", "ReadyToInstall",
                 "ScanInProgress", "ScanFailed", "AdditionalContentRequired")
STEP_DONE = ("Success", "Error")  # a step's terminal statuses; also "InProgress", "Unknown status"


class Open(BaseModel):
    """Unknown fields are kept (the API grows); names are the wire's camelCase."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Resource(Open):
    id: str = ""
    name: str = ""
    type: str = ""
    location: str | None = None


class Step(Open):
    """A node of a step tree (deploymentSettings' validationStatus/deploymentStatus, an updateRun's progress)."""

    name: str = ""
    description: str | None = None
    status: str | None = None  # Success, Error, InProgress, "Unknown status" (open)
    start_time_utc: str | None = Field(None, alias="startTimeUtc")
    end_time_utc: str | None = Field(None, alias="endTimeUtc")
    full_step_index: str | None = Field(None, alias="fullStepIndex")
    error_message: str | None = Field(None, alias="errorMessage")
    exception: list[str] = Field(default_factory=list)
    steps: list[Step] = Field(default_factory=list)

    def walk(self, depth: int = 0, path: str = "") -> list[tuple[int, str, Step]]:
        here = f"{path} > {self.name}" if path else self.name
        found = [(depth, here, self)]
        for child in self.steps:
            found += child.walk(depth + 1, here)
        return found

    def failing(self) -> Step | None:
        """The deepest step in Error: where the cause is."""
        for child in self.steps:
            deeper = child.failing()
            if deeper is not None:
                return deeper
        return self if self.status == "Error" else None


class StatusTree(Open):
    status: str | None = None  # Succeeded, Failed, InProgress... (open)
    steps: list[Step] = Field(default_factory=list)

    def root(self, name: str) -> Step:
        return Step(name=name, status=self.status, steps=self.steps)


class ReportedProperties(Open):
    validation_status: StatusTree | None = Field(None, alias="validationStatus")
    deployment_status: StatusTree | None = Field(None, alias="deploymentStatus")


class DeploymentSettingProperties(Open):
    provisioning_state: str | None = Field(None, alias="provisioningState")
    arc_node_resource_ids: list[str] = Field(default_factory=list, alias="arcNodeResourceIds")
    deployment_mode: str = Field("Deploy", alias="deploymentMode")  # Validate, Deploy
    operation_type: str = Field("ClusterProvisioning", alias="operationType")  # ClusterProvisioning, ClusterUpgrade
    deployment_configuration: dict[str, Any] = Field(default_factory=dict, alias="deploymentConfiguration")
    reported_properties: ReportedProperties | None = Field(None, alias="reportedProperties")


class DeploymentSetting(Resource):
    properties: DeploymentSettingProperties


class PrecheckResult(Open):
    name: str | None = None
    display_name: str | None = Field(None, alias="displayName")
    title: str | None = None
    status: str | None = None  # Succeeded, Failed, InProgress
    severity: str | None = None  # Critical, Warning, Informational, Hidden
    description: str | None = None
    remediation: str | None = None
    target_resource_name: str | None = Field(None, alias="targetResourceName")
    health_check_source: str | None = Field(None, alias="healthCheckSource")


class UpdateProperties(Open):
    provisioning_state: str | None = Field(None, alias="provisioningState")
    state: str | None = None  # UPDATE_STATES and more (open)
    display_name: str | None = Field(None, alias="displayName")
    version: str | None = None
    description: str | None = None
    health_state: str | None = Field(None, alias="healthState")  # Unknown, Success, Failure, Warning, Error...
    health_check_result: list[PrecheckResult] = Field(default_factory=list, alias="healthCheckResult")
    health_check_date: str | None = Field(None, alias="healthCheckDate")
    reboot_required: str | None = Field(None, alias="rebootRequired")
    package_size_in_mb: float | None = Field(None, alias="packageSizeInMb")
    installed_date: str | None = Field(None, alias="installedDate")


class Update(Resource):
    properties: UpdateProperties


class UpdateRunProperties(Open):
    provisioning_state: str | None = Field(None, alias="provisioningState")
    time_started: str | None = Field(None, alias="timeStarted")
    last_updated_time: str | None = Field(None, alias="lastUpdatedTime")
    duration: str | None = None
    state: str | None = None  # Unknown, Succeeded, InProgress, Failed (open)
    progress: Step | None = None


class UpdateRun(Resource):
    properties: UpdateRunProperties


class UpdateSummaryProperties(Open):
    state: str | None = None  # AppliedSuccessfully, UpdateAvailable, UpdateInProgress, UpdateFailed, NeedsAttention..
    current_version: str | None = Field(None, alias="currentVersion")
    health_state: str | None = Field(None, alias="healthState")
    last_checked: str | None = Field(None, alias="lastChecked")
    last_updated: str | None = Field(None, alias="lastUpdated")


class UpdateSummary(Resource):
    properties: UpdateSummaryProperties


class ClusterProperties(Open):
    provisioning_state: str | None = Field(None, alias="provisioningState")
    status: str | None = None  # ConnectedRecently, NotYetRegistered, Disconnected... (open)
    cloud_id: str | None = Field(None, alias="cloudId")


class HciCluster(Resource):
    properties: ClusterProperties


class ArcMachineProperties(Open):
    status: str | None = None  # Connected, Disconnected, Expired (open)
    os_version: str | None = Field(None, alias="osVersion")


class ArcMachine(Resource):
    identity: dict[str, Any] | None = None  # {type: SystemAssigned, principalId, tenantId}
    properties: ArcMachineProperties

    @property
    def principal_id(self) -> str | None:
        return (self.identity or {}).get("principalId")


class ExtensionProperties(Open):
    publisher: str | None = None
    type: str | None = None
    type_handler_version: str | None = Field(None, alias="typeHandlerVersion")
    provisioning_state: str | None = Field(None, alias="provisioningState")


class Extension(Resource):
    properties: ExtensionProperties
