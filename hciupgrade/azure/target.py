"""A cluster's Azure side, as the inventory names it: where its resources are, how to authenticate, and what the
solution upgrade needs (the key vault with the LCM deployment user's secret, six free addresses)."""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LCM_EXTENSION_MINIMUM = "30.2408.0.537"  # the LcmController extension; the checker wants the service >= 10.2408.0.537


class AzureCredential(BaseModel):
    """Which azure-identity credential: `default` (DefaultAzureCredential: environment, workload identity,
    managed identity, Azure CLI...), `client-secret` (tenant, client id, the secret in an environment variable),
    `managed-identity` (optionally a user-assigned client id), `workload-identity`, `azure-cli`; `simulator`
    (a static token from an environment variable, only towards a loopback simulator)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["default", "client-secret", "managed-identity", "workload-identity", "azure-cli", "simulator"] = \
        "default"
    tenant_id: str | None = None
    client_id: str | None = None
    secret_env: str | None = Field(None, description="client-secret: the environment variable holding the secret")
    token_env: str | None = Field(None, description="simulator: the environment variable holding the token")

    @model_validator(mode="after")
    def _complete(self) -> AzureCredential:
        if self.kind == "client-secret" and not (self.tenant_id and self.client_id and self.secret_env):
            raise ValueError("client-secret needs tenant_id, client_id and secret_env (the variable that holds the "
                             "secret, never the secret itself)")
        if self.kind == "simulator" and not self.token_env:
            raise ValueError("simulator needs token_env")
        return self

    def build(self) -> Any:
        """The azure-identity credential (imported here: only the solution upgrade needs it)."""
        if self.kind == "simulator":
            return StaticToken(os.environ[self.token_env or ""])
        import azure.identity as identity

        if self.kind == "client-secret":
            secret = os.environ.get(self.secret_env or "")
            if not secret:
                raise ValueError(f"azure.credential.secret_env: the variable {self.secret_env} is not set")
            return identity.ClientSecretCredential(self.tenant_id, self.client_id, secret)
        if self.kind == "managed-identity":
            return identity.ManagedIdentityCredential(client_id=self.client_id)
        if self.kind == "workload-identity":
            return identity.WorkloadIdentityCredential(tenant_id=self.tenant_id, client_id=self.client_id)
        if self.kind == "azure-cli":
            return identity.AzureCliCredential(tenant_id=self.tenant_id)
        return identity.DefaultAzureCredential()


class StaticToken:
    """A token the simulator accepts (azure.core's AccessToken shape: token, expires_on)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)

    def __repr__(self) -> str:
        return "StaticToken(***)"


class IpPool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    @property
    def addresses(self) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address(i) for i in range(int(self.start), int(self.end) + 1)]


class AzureTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: str = Field(pattern=r"^[0-9a-fA-F-]{36}$")
    resource_group: str = Field(min_length=1, max_length=90)
    resource_name: str | None = Field(None, description="the cluster resource's name (default: the cluster's)")
    location: str = Field(min_length=1, description="the Azure region, e.g. westeurope")
    endpoint: str = Field("https://management.azure.com", description="ARM; another cloud's, or a simulator's")
    scope: str = "https://management.azure.com/.default"
    credential: AzureCredential = AzureCredential()
    key_vault: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$",
                           description="holds <cluster>-AzureStackLCMUserCredential (3-24 letters, digits, hyphens, "
                                       "no '--')")
    ip_pool: IpPool = Field(description="six contiguous free IPv4 addresses for the Arc Resource Bridge and infra VMs")
    cluster_ip: ipaddress.IPv4Address | None = Field(None, description="the cluster's IP: must not be in the pool")
    custom_location: str | None = Field(None, description="default <cluster>-cl")
    lcm_extension_minimum: str = LCM_EXTENSION_MINIMUM
    solution_version: str = Field("10.1.0.0", description="deploymentConfiguration.version of the upgrade template")

    @model_validator(mode="after")
    def _pool(self) -> AzureTarget:
        if "--" in self.key_vault:
            raise ValueError(f"key_vault: {self.key_vault!r} has '--', which Azure refuses in a vault name")
        count = int(self.ip_pool.end) - int(self.ip_pool.start) + 1
        if count != 6:
            raise ValueError(f"ip_pool: {self.ip_pool.start}-{self.ip_pool.end} holds {count} addresses; the "
                             "solution upgrade takes 6 contiguous ones")
        if self.cluster_ip is not None and self.cluster_ip in self.ip_pool.addresses:
            raise ValueError(f"ip_pool: the cluster IP {self.cluster_ip} is inside it "
                             "(AzStackHci_Upgrade_ClusterIPExcludedFromIPPool)")
        return self
