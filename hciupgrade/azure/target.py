"""A cluster's Azure side, as the inventory names it: where its resources are, how to authenticate, and what the
solution upgrade needs: the key vault with the LCM deployment user's secret, six free addresses, and what the
documented upgrade template puts in the deploymentSettings (the management subnet, its gateway and DNS servers,
each node's management address, the domain, the naming prefix, observability). Source of every field:
Azure/azure-quickstart-templates quickstarts/microsoft.azurestackhci/upgrade-cluster/azuredeploy.json@15c284b4."""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hciupgrade.net import is_loopback

LCM_EXTENSION_MINIMUM = "30.2408.0.537"  # the LcmController extension; the checker wants the service >= 10.2408.0.537
# deploymentSettings' api-version: the 2503+ template's (it creates edgeDevices first); 2024-04-01 is the one of
# upgrade-cluster-2411.3 (2411.3 and earlier, no edge devices)
TEMPLATE_API_VERSION = "2024-09-01-preview"
VAULT_SUFFIXES = {  # Key Vault's DNS suffix per cloud, from ARM's host (az cloud show: suffixes.keyvaultDns)
    "management.azure.com": "vault.azure.net",
    "management.chinacloudapi.cn": "vault.azure.cn",
    "management.usgovcloudapi.net": "vault.usgovcloudapi.net",
}


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


class ManagementNetwork(BaseModel):
    """The management network of the template's infrastructureNetwork: its subnet (mask and gateway) and DNS."""

    model_config = ConfigDict(extra="forbid")

    subnet_mask: ipaddress.IPv4Address = Field(description="e.g. 255.255.255.0")
    gateway: ipaddress.IPv4Address = Field(description="the management subnet's default gateway")
    dns_servers: list[ipaddress.IPv4Address] = Field(min_length=1, description="the DNS servers the nodes use")

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.gateway}/{self.subnet_mask}", strict=False)

    @model_validator(mode="after")
    def _mask(self) -> ManagementNetwork:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{self.subnet_mask}")
        except ValueError:
            raise ValueError(f"subnet_mask: {self.subnet_mask} is not a netmask (its ones must be contiguous, e.g. "
                             "255.255.255.0)") from None
        return self


class Observability(BaseModel):
    """deploymentData.observability (the template sets all three true; euLocation is for EU data residency)."""

    model_config = ConfigDict(extra="forbid")

    streaming_data_client: bool = True
    eu_location: bool = False
    episodic_data_upload: bool = True


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
    api_version: str = Field(TEMPLATE_API_VERSION, pattern=r"^\d{4}-\d{2}-\d{2}(-preview)?$",
                             description="deploymentSettings' api-version: 2024-09-01-preview (the 2503+ template, "
                                         "edge devices first) or 2024-04-01 (2411.3 and earlier)")
    network: ManagementNetwork | None = Field(None, description="the management subnet, gateway and DNS servers")
    node_addresses: dict[str, ipaddress.IPv4Address] = Field(
        default_factory=dict, description="each node's management IPv4 address (physicalNodes[].ipv4Address)")
    domain_fqdn: str | None = Field(None, max_length=253, pattern=r"^([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$",
                                    description="the Active Directory domain, e.g. corp.contoso.com")
    failover_cluster_name: str | None = Field(None, description="the failover cluster's name (default: the cluster's)")
    naming_prefix: str = Field("HCI001", pattern=r"^[A-Za-z0-9-]{1,8}$",
                               description="namingPrefix: up to 8 letters, digits and hyphens (the template's HCI001)")
    quiet_alerts: bool = Field(
        False, description="during a run, an alert processing rule (RemoveAllActionGroups) scoped to the cluster's "
                           "resource keeps its planned restarts from paging anyone; removed at the end")
    adou_path: str = Field("", description="adouPath (the template's empty string: the domain's default OU)")
    observability: Observability = Observability()
    key_vault_suffix: str | None = Field(None, description="Key Vault's DNS suffix, for a cloud hci-upgrade does "
                                                           "not know (default: from the endpoint)")

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
        host = urlsplit(self.endpoint).hostname or ""
        if self.key_vault_suffix is None and host not in VAULT_SUFFIXES and not is_loopback(host):
            raise ValueError(f"key_vault_suffix: {host} is not a cloud hci-upgrade knows; give its Key Vault DNS "
                             "suffix (az cloud show --query suffixes.keyvaultDns)")
        pool = set(self.ip_pool.addresses)
        for node, address in self.node_addresses.items():
            if address in pool:
                raise ValueError(f"node_addresses.{node}: {address} is inside ip_pool, which must be free")
        if len(set(self.node_addresses.values())) != len(self.node_addresses):
            raise ValueError("node_addresses: two nodes have the same address")
        if self.network is not None:
            subnet = self.network.subnet
            outside = [(f"ip_pool.{k}", a) for k, a in (("start", self.ip_pool.start), ("end", self.ip_pool.end))
                       if a not in subnet] + [(f"node_addresses.{n}", a) for n, a in self.node_addresses.items()
                                              if a not in subnet]
            if outside:
                field, address = outside[0]
                raise ValueError(f"{field}: {address} is outside the management subnet {subnet} (network.gateway "
                                 f"{self.network.gateway}, network.subnet_mask {self.network.subnet_mask})")
            if self.network.gateway in pool:
                raise ValueError(f"ip_pool: the gateway {self.network.gateway} is inside it")
            taken = [d for d in self.network.dns_servers if d in pool]
            if taken:
                raise ValueError(f"ip_pool: the DNS server {taken[0]} is inside it")
        return self

    @property
    def vault_suffix(self) -> str:
        """Key Vault's DNS suffix in this cloud (the secret's location in the deploymentSettings)."""
        host = urlsplit(self.endpoint).hostname or ""
        return self.key_vault_suffix or VAULT_SUFFIXES.get(host, "vault.azure.net")  # a simulator: the public one

    @property
    def edge_devices(self) -> bool:
        """The 2503+ template creates Microsoft.AzureStackHCI/edgeDevices/default on each Arc machine (kind HCI)
        before the deploymentSettings, in Validate mode; the 2024-04-01 one did not."""
        return self.api_version >= "2024-09-01"

    def upgrade_problems(self, nodes: list[str]) -> list[str]:
        """The template's fields the inventory leaves out for the solution upgrade, each with what to write
        (the updates need none of them)."""
        missing = []
        if self.network is None:
            missing.append("azure.network: {subnet_mask, gateway, dns_servers} of the management subnet")
        if not self.domain_fqdn:
            missing.append("azure.domain_fqdn: the Active Directory domain (e.g. corp.contoso.com)")
        given = {n.lower() for n in self.node_addresses}
        absent = [n for n in nodes if n.lower() not in given]
        if absent:
            missing.append(f"azure.node_addresses: each node's management IPv4 address (missing: {', '.join(absent)})")
        return missing
