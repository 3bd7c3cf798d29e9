"""Pydantic models: the inventory, run options and outcomes. Every one refuses unknown fields, so a typo is an
error before anything touches a cluster, and every error names the field, the value and what is allowed."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from hciupgrade.azure.target import AzureTarget
from hciupgrade.net import is_loopback
from hciupgrade.targets import Release, ReleaseName, WorkloadPolicy, at_least, release
from hciupgrade.windows import TagWindow, Window


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Transport(Strict):
    """How to reach the nodes. The default is what a real cluster wants: HTTPS with Negotiate (Kerberos/NTLM)."""

    scheme: Literal["https", "http"] = "https"
    auth: Literal["negotiate", "kerberos", "ntlm", "credssp", "certificate", "basic"] = "negotiate"
    cert_validation: bool | str = Field(True, description="True, False, or the path of a CA bundle")
    connection_timeout: float = Field(10, gt=0, le=300)
    operation_timeout: int = Field(20, ge=1, le=600, description="WSMan OperationTimeout of a long-poll")
    read_timeout: float = Field(30, gt=0, le=900)
    call_timeout: float = Field(120, gt=0, description="deadline of one remote call, in wall seconds")
    configuration_name: str = Field("Microsoft.PowerShell", description="PS session configuration (JEA endpoint)")

    @model_validator(mode="after")
    def _timeouts(self) -> Transport:
        if self.read_timeout <= self.operation_timeout:
            raise ValueError(
                f"read_timeout ({self.read_timeout}) must be larger than operation_timeout "
                f"({self.operation_timeout}): a Receive is a long-poll that may take the whole operation timeout")
        return self


class CredentialRef(Strict):
    """Where the password lives: an environment variable or a Prefect Secret block; never the secret itself."""

    username: str = Field(min_length=1)
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    prefect_secret: str | None = Field(None, pattern=r"^[a-z0-9-]+$")

    @model_validator(mode="after")
    def _one_source(self) -> CredentialRef:
        if (self.password_env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of password_env (an environment variable) or prefect_secret "
                             "(the name of a Prefect Secret block)")
        return self

    def resolve(self, secret_block: Callable[[str], str] | None = None) -> SecretStr:
        """The password. A Prefect Secret block is read through `secret_block` (flows pass Prefect's loader;
        the domain itself never imports Prefect)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise CredentialError(f"credential.password_env: environment variable {self.password_env} is "
                                      "not set; export it before the run")
            return SecretStr(value)
        if secret_block is None:
            raise CredentialError(f"credential.prefect_secret: {self.prefect_secret!r} needs a Prefect run to read")
        return SecretStr(secret_block(str(self.prefect_secret)))


class CredentialError(RuntimeError):
    pass


class NodeEndpoint(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")
    address: str = Field(min_length=1, description="host name or IP of the node's WinRM listener")
    port: int | None = Field(None, ge=1, le=65535)


class ClusterInventory(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")
    nodes: list[NodeEndpoint] = Field(max_length=16)
    transport: Transport = Transport()
    credential: CredentialRef
    time_factor: float = Field(1.0, gt=0, le=100_000,
                               description="simulator only: cluster seconds per wall second; 1 for a real cluster")
    tags: dict[str, str] = Field(default_factory=dict, description="site, ring, region...: what a fleet selects by")
    window: Window | None = Field(None, description="this cluster's maintenance window (over any tag window)")
    azure: AzureTarget | None = Field(None, description="the cluster's Azure side: the solution upgrade and updates")
    target_release: ReleaseName | None = Field(None, description="23H2 or 24H2 (hciupgrade/targets.py); the run "
                                                                 "options' TargetRelease wins when given")

    @field_validator("nodes")
    @classmethod
    def _rolling(cls, nodes: list[NodeEndpoint]) -> list[NodeEndpoint]:
        if len(nodes) < 2:
            raise ValueError(f"a cluster of {len(nodes)} node(s) has no rolling path: a node can only leave service "
                             "while another carries its workloads and a copy of its data; list at least 2 nodes "
                             "(a single-node system is updated in a maintenance window that allows downtime)")
        return nodes

    def warnings(self) -> list[str]:
        """What is allowed but unsafe, for the operator to read before the run."""
        remote = [n for n in self.nodes if not is_loopback(n.address)]
        if self.transport.scheme == "https" and self.transport.cert_validation is False and remote:
            return [f"cluster {self.name}: certificate validation is off towards {n.name} ({n.address}): anyone "
                    "on the path can impersonate the node; give transport.cert_validation the CA bundle instead"
                    for n in remote]
        return []

    @model_validator(mode="after")
    def _safe_transport(self) -> ClusterInventory:
        names = [n.name.lower() for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster {self.name}: node names must be unique")
        remote = [n.address for n in self.nodes if not is_loopback(n.address)]
        if remote and self.transport.scheme == "http" and self.transport.auth == "basic":
            raise ValueError(
                f"cluster {self.name}: Basic authentication over HTTP would send the password in clear text to "
                f"{remote[0]}; use scheme https, or auth negotiate/kerberos (loopback simulators excepted)")
        if remote and self.time_factor != 1.0:
            raise ValueError(f"cluster {self.name}: time_factor is for the simulator; a real cluster runs at 1")
        if self.azure is not None and self.azure.node_addresses:
            given = {n.lower() for n in self.azure.node_addresses}
            unknown = sorted(given - set(names))
            absent = sorted(set(names) - given)
            if unknown or absent:
                raise ValueError(f"cluster {self.name}: azure.node_addresses must name each node once: "
                                 + "; ".join(([f"not a node: {', '.join(unknown)}"] if unknown else [])
                                             + ([f"missing: {', '.join(absent)}"] if absent else [])))
        return self

    def node(self, name: str) -> NodeEndpoint:
        for node in self.nodes:
            if node.name.lower() == name.lower():
                return node
        raise KeyError(name)


class WavePolicy(Strict):
    """How a fleet goes: canary clusters first, then batches; at most `max_parallel` clusters at once; no new
    cluster once the failure rate passes `max_failure_rate`."""

    canary: dict[str, str] = Field(default_factory=lambda: {"ring": "canary"},
                                   description="tags of the canary clusters (the first wave)")
    batch: int | str = Field("25%", description="clusters per later wave: a count, or a percentage of the rest")
    max_parallel: int = Field(10, ge=1, le=1000, description="clusters upgraded at once across the fleet (K)")
    max_failure_rate: float = Field(0.1, ge=0, le=1, description="failed clusters / finished clusters that stop "
                                                                 "further waves")
    margin_minutes: float = Field(15, ge=0, description="a node starts only if its estimate plus this fits the "
                                                        "window's remaining time")
    default_node_minutes: float = Field(150, gt=0, description="a node's estimate with no history: drain, 45-90 "
                                                               "min of setup, a 40-min restart, the resync")
    default_stage_minutes: float = Field(120, gt=0, description="PreStage with no history: setup's first phase on "
                                                                "every node at once (45-90 min, slower in service)")

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v < 1:
                raise ValueError("a wave needs at least 1 cluster")
            return v
        text = v.strip()
        if not text.endswith("%") or not text[:-1].replace(".", "", 1).isdigit() or not 0 < float(text[:-1]) <= 100:
            raise ValueError(f"{v!r}: give a count (10) or a percentage of the clusters after the canaries (25%)")
        return text


class Inventory(Strict):
    clusters: list[ClusterInventory] = Field(min_length=1)
    windows: list[TagWindow] = Field(default_factory=list, description="maintenance windows by tag")
    waves: WavePolicy = WavePolicy()

    @model_validator(mode="after")
    def _one_window_each(self) -> Inventory:
        names = [c.name.lower() for c in self.clusters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"cluster {twice[0]} is listed twice: cluster names must be unique")
        for cluster in self.clusters:
            matching = [i for i, w in enumerate(self.windows) if w.applies(cluster.tags)]
            if cluster.window is None and len(matching) > 1:
                raise ValueError(
                    f"cluster {cluster.name}: windows[{matching[0]}] ({self.windows[matching[0]].match}) and "
                    f"windows[{matching[1]}] ({self.windows[matching[1]].match}) both match its tags: give it a "
                    "window of its own, or make the matches exclusive")
        return self

    def window_for(self, cluster: ClusterInventory) -> Window | None:
        """The cluster's own window, else the one tag window that matches it, else none (always open)."""
        return cluster.window or next((w for w in self.windows if w.applies(cluster.tags)), None)

    def select(self, tags: list[str] | None, names: list[str] | None = None) -> list[ClusterInventory]:
        """Clusters carrying every `key=value` of `tags` (all clusters without tags), and named in `names`."""
        wanted = dict(parse_tag(t) for t in tags or [])
        chosen = {n.lower() for n in names} if names else None
        return [c for c in self.clusters if all(c.tags.get(k) == v for k, v in wanted.items())
                and (chosen is None or c.name.lower() in chosen)]

    def schedules(self) -> list[dict[str, object]]:
        """A Prefect schedule per window (Cron in the window's time zone) with the fleet flow's parameters that
        select its clusters: for deployments/prefect.yaml."""
        found: list[dict[str, object]] = [
            {"cron": w.cron(), "timezone": w.timezone, "parameters": {"tags": [f"{k}={v}" for k, v in w.match.items()]}}
            for w in self.windows]
        found += [{"cron": c.window.cron(), "timezone": c.window.timezone, "parameters": {"clusters": [c.name]}}
                  for c in self.clusters if c.window is not None]
        return found

    def cluster(self, name: str | None) -> ClusterInventory:
        if name is None:
            if len(self.clusters) == 1:
                return self.clusters[0]
            raise InputError(f"--cluster: the inventory holds {len(self.clusters)} clusters; name one of "
                             f"{', '.join(c.name for c in self.clusters)}")
        for cluster in self.clusters:
            if cluster.name.lower() == name.lower():
                return cluster
        raise InputError(f"--cluster: {name!r} is not in the inventory (it has "
                         f"{', '.join(c.name for c in self.clusters)})")

    def write(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False))


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise InputError(f"--tag: {text!r} is not key=value (for instance ring=canary)")
    return key.strip(), value.strip()


class InputError(ValueError):
    """Bad input: the message names the field, the value and what is allowed."""


def format_validation(source: str, err: ValidationError, what: str = "") -> str:
    """One line a problem: the field's path, what is wrong, the value given (inventories, options, scenarios)."""
    lines = [f"{source}: invalid" + (f" {what}" if what else "")]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        lines.append(f"  {loc}: {e['msg'].removeprefix('Value error, ')}{shown}")
    return "\n".join(lines)


def read_yaml(path: str | Path, what: str, error: type[Exception] = None) -> object:  # type: ignore[assignment]
    """A YAML file's data; a missing file or bad YAML raises `error` (InputError by default) naming the file."""
    error = error or InputError
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def load_options(path: str | Path | None) -> RunOptions:
    """Run options from a YAML file (CAU's names); every problem names the file and the field."""
    if path is None:
        return RunOptions()
    data = read_yaml(path, "options")
    if data is not None and not isinstance(data, dict):
        raise InputError(f"{path}: run options are a mapping of names (MaxFailedNodes: 1, ...), not "
                         f"{type(data).__name__}")
    try:
        return RunOptions.model_validate(data or {})
    except ValidationError as e:
        raise InputError(format_validation(str(path), e)) from None


def load_inventory(path: str | Path) -> Inventory:
    data = read_yaml(path, "inventory")
    try:
        return Inventory.model_validate(data)
    except ValidationError as e:
        raise InputError(format_validation(str(path), e)) from None


SCRIPT_PATH = r"^[A-Za-z]:\\[A-Za-z0-9_\\ .()-]{1,250}\.ps1$"
LOCAL_DIR = r"^[A-Za-z]:\\[A-Za-z0-9_\\ .()-]{0,250}$"  # a local folder on the node, by the same rule
LOCAL_MSU = r"^[A-Za-z]:\\[A-Za-z0-9_\\ .()-]{1,250}\.msu$"


def cau_title(name: str, info: Any) -> str:
    """A form title as CAU writes the option (its alias: PathToSetupMedia, not 'Pathtosetupmedia')."""
    return info.alias or name.replace("_", " ").capitalize()


# the engine's own settings (set by the flows, the benchmarks and the tests, or learnt from past runs): kept out
# of the Prefect UI's Run form, still accepted when given
INTERNAL_OPTIONS = ("restart_only", "poll_seconds", "poll_max_seconds", "task_retries", "retry_delay_seconds",
                    "window_seconds", "node_estimate_seconds", "stage_estimate_seconds")


def operator_schema(schema: dict[str, Any]) -> None:
    """RunOptions' JSON schema as the Run form shows it: the internal settings left out, and other properties
    allowed (so a deployment that sets an internal one still validates; the model itself still forbids a
    misspelt name when the run starts)."""
    for name in INTERNAL_OPTIONS:
        schema["properties"].pop(name, None)
    schema["additionalProperties"] = True


class RunOptions(Strict):
    """How a rolling upgrade runs, with Cluster-Aware Updating's names (as aliases) and defaults where CAU has
    them (reference/domain.md §5.2). Durations are cluster minutes: the simulator's clock scales them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, field_title_generator=cau_title,
                              json_schema_extra=operator_schema)

    engine: Literal["hci-upgrade", "cau"] = Field(
        "hci-upgrade", alias="Engine",
        description="who does the node work: hci-upgrade's own engine, or Cluster-Aware Updating (its clustered role "
                    "runs the RollingUpgradePlugin, or the HotfixPlugin for the cumulative update) under hci-upgrade's "
                    "preflight, plan, approvals, records and status; see the README's comparison")
    hotfix_root_folder: str | None = Field(
        None, pattern=r"^\\\\[^\\]+\\[^\\]+", alias="HotfixRootFolderPath",
        description="Engine cau, cumulative update: the SMB share CAU's HotfixPlugin installs the .msu from "
                    "(\\\\server\\share\\CauHotfix; the package in its CAUHotfix_All folder)")
    update: Literal["feature", "cumulative"] = Field(
        "feature", description="feature: the target release's feature update from the setup media; cumulative: "
                               "its cumulative update (LCU) package, once every node runs the release")
    target_release: ReleaseName | None = Field(
        None, alias="TargetRelease",
        description="23H2 (25398, the reference procedure) or 24H2 (26100, Microsoft's direct path since 2505); "
                    "default: the inventory's, else 23H2")
    workload_policy: WorkloadPolicy | None = Field(
        None, alias="WorkloadPolicy",
        description="the VMs during the OS upgrade: live-migrate (drained to other nodes, running), or shut-down "
                    "(each node's VMs shut down before its drain, started after its resume); default: what the "
                    "target's current page recommends (shut-down for both)")
    target_build: str | None = Field(None, pattern=r"^10\.0\.\d{5}(\.\d+)?$",
                                     description="a node on this build (or a later UBR) counts as upgraded; for the "
                                                 "cumulative update, the lowest UBR accepted (default: the target "
                                                 "release's build, or its checker's minimum LCU)")
    update_package: str = Field(r"C:\SetupFiles\CumulativeUpdate\23H2-LCU.msu", pattern=LOCAL_MSU,
                                alias="PathToUpdatePackage",
                                description="the cumulative update (.msu), the same local path on every node")
    setup_path: str = Field(r"C:\SetupFiles\WindowsServer\ExtractedFiles", pattern=LOCAL_DIR,
                            alias="PathToSetupMedia",
                            description="the extracted 23H2 media, the same local path on every node")
    max_failed_nodes: int | None = Field(None, ge=0, alias="MaxFailedNodes",
                                         description="failed nodes the run tolerates; default: a third of the nodes")
    max_retries_per_node: int = Field(3, ge=1, le=64, alias="MaxRetriesPerNode",
                                      description="attempts of a node's whole update before it counts as failed")
    require_all_nodes_online: bool = Field(False, alias="RequireAllNodesOnline",
                                           description="refuse to start unless every node is Up (CAU's switch)")
    node_order: list[str] | None = Field(None, alias="NodeOrder",
                                         description="explicit order; default: fewest roles first, as CAU")
    failback: Literal["Immediate", "Policy", "NoFailback"] = Field(
        "Immediate", alias="FailbackMode",
        description="the roles after a node's resume: moved back at once, by each group's failback policy, or left")
    reboot_timeout_minutes: float = Field(15, gt=0, alias="RebootTimeoutMinutes",
                                          description="a plain restart (rolling restart, monthly update) until the "
                                                      "node is back: CAU's default")
    feature_update_reboot_timeout_minutes: float = Field(
        120, gt=0, alias="FeatureUpdateRebootTimeoutMinutes",
        description="the restart that installs the feature update (setup's offline phases: several restarts, "
                    "often past 30 min) until the node is back")
    drain_timeout_minutes: float = Field(30, gt=0, alias="DrainTimeoutMinutes",
                                         description="how long a node's drain may take")
    drain_timeout_policy: Literal["fail", "force-drain"] = Field(
        "fail", alias="DrainTimeoutPolicy",
        description="when a drain fails or times out: fail the node, or -ForceDrain (roles that cannot move are "
                    "moved as failed: only when the operator allows it)")
    repair_timeout_minutes: float = Field(720, gt=0, alias="WaitForStorageRepairTimeoutMinutes",
                                          description="how long storage may repair after a node is back")
    gate_timeout_minutes: float = Field(30, gt=0, alias="SuspendClusterNodeTimeoutMinutes",
                                        description="how long to wait for the cluster to be safe to drain")
    install_timeout_minutes: float = Field(240, gt=0, description="how long setup's first phase (or the update's "
                                                                  "install) may take on a node")
    pre_update_script: str | None = Field(None, pattern=SCRIPT_PATH, alias="PreUpdateScript",
                                          description="a .ps1 on the node, run before the pause")
    post_update_script: str | None = Field(None, pattern=SCRIPT_PATH, alias="PostUpdateScript",
                                           description="a .ps1 on the node, run after the resume")
    stop_after: timedelta | None = Field(None, alias="StopAfter",
                                         description="start no node after this much time (cluster time)")
    warn_after: timedelta | None = Field(None, alias="WarnAfter",
                                         description="warn when the run is still going after this much time")
    pre_stage: bool = Field(
        False, alias="PreStage",
        description="tight windows: setup's first phase (/NoReboot) runs on every node at once before the first "
                    "drain, while the nodes serve their VMs; each node is then out of service only to restart into "
                    "setup's offline phases. Not a Microsoft procedure: read the README's risks first")
    cumulative_in_drain: bool = Field(
        False, alias="InstallCumulativeUpdateInSameDrain",
        description="the cumulative update (PathToUpdatePackage) installed while the node is still drained after "
                    "the feature update, then one more restart: one drain per node for the whole OS path")
    node_soak_minutes: float = Field(0, ge=0, alias="NodeSoakMinutes",
                                     description="a pause after a node resumes and storage is healthy, before the "
                                                 "next node's gate (to watch a node under load)")
    restart_only: list[str] | None = Field(
        None, description="a rolling restart of these nodes (drain, restart, resume, resync; no install): for "
                          "remediation that needs a restart")
    poll_seconds: float = Field(15, gt=0, description="cluster seconds between polls of a long operation")
    poll_max_seconds: float = Field(60, gt=0, description="the longest poll interval: a wait polls every "
                                                          "poll_seconds, then every twentieth of the time waited, "
                                                          "up to this")
    task_retries: int = Field(3, ge=0, le=10, description="retries of a step on a transient remoting failure")
    retry_delay_seconds: float = Field(10, ge=0, description="wall seconds between those retries")
    window_seconds: float | None = Field(
        None, gt=0, description="cluster seconds from the run's start to its maintenance window's end (set by the "
                                "fleet flow): a node starts only if its estimate and the margin fit what is left")
    node_estimate_seconds: float | None = Field(None, gt=0, description="a node's expected duration, cluster "
                                                                        "seconds (from past runs)")
    stage_estimate_seconds: float | None = Field(None, gt=0, description="PreStage: the staging's expected "
                                                                         "duration, cluster seconds (past runs)")
    window_margin_seconds: float = Field(900, ge=0, description="kept free at the window's end")
    lock_lease_seconds: float = Field(120, ge=60, le=86400,
                                      description="Prefect lease: how long a killed run's lock outlives it")
    retry_once: bool = Field(False, alias="RetryStalledOrFailedRunOnce",
                             description="unattended fleets: a run that failed in a way one more try may get past "
                                         "(a lost session, a node slow to come back) runs once more after "
                                         "RetryCooldownMinutes, adopting what it left; never after a gate refused, "
                                         "a node paused by someone else, or a step the cluster refused")
    retry_cooldown_minutes: float = Field(15, ge=0, le=24 * 60, alias="RetryCooldownMinutes",
                                          description="RetryStalledOrFailedRunOnce: the wait before the one retry "
                                                      "(cluster minutes)")
    vm_version_update: list[str] = Field(
        default_factory=list, alias="VmVersionUpdate",
        description="post-upgrade: the VMs whose configuration version to update; each is shut down, updated and "
                    "started, so name only VMs that are allowed downtime")
    vm_version_update_all: bool = Field(False, alias="VmVersionUpdateAll",
                                        description="post-upgrade: every VM (an explicit opt-in to their downtime)")
    approval: Approval | None = Field(
        None, description="an approval given before the run (the CLI's --approve): the 24H2 path's clean-up of the "
                          "Cloud Management group needs one naming cloud-management")
    approval_timeout_minutes: float = Field(
        240, gt=0, alias="ApprovalTimeoutMinutes",
        description="on a Prefect server: how long an approval may take; after it nothing irreversible has happened")

    @field_validator("node_order")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len({n.lower() for n in v}) != len(v):
            raise ValueError("node_order names a node twice")
        return v

    @field_validator("setup_path", "update_package", "pre_update_script", "post_update_script")
    @classmethod
    def _no_parent(cls, v: str | None) -> str | None:
        if v is not None and ".." in v.split("\\"):
            raise ValueError("a path on the node may not climb out of its folder with '..'")
        return v

    @model_validator(mode="after")
    def _cau_engine(self) -> RunOptions:
        """What CAU cannot do, refused before anything connects, each naming the option."""
        if self.engine != "cau":
            return self
        for name, given in (("PreStage", self.pre_stage), ("InstallCumulativeUpdateInSameDrain",
                                                           self.cumulative_in_drain),
                            ("NodeSoakMinutes", self.node_soak_minutes > 0),
                            ("restart_only", self.restart_only is not None),
                            ("DrainTimeoutPolicy force-drain", self.drain_timeout_policy == "force-drain")):
            if given:
                raise ValueError(f"Engine cau: {name} is hci-upgrade's own engine's; CAU has no such option. Drop "
                                 "it, or use Engine: hci-upgrade")
        if self.update == "cumulative" and not self.hotfix_root_folder:
            raise ValueError("Engine cau with update cumulative: HotfixRootFolderPath is required (the SMB share "
                             "CAU's HotfixPlugin installs the .msu from, \\\\server\\share\\CauHotfix)")
        if self.vm_policy == "shut-down" and (self.pre_update_script or self.post_update_script):
            raise ValueError("Engine cau with WorkloadPolicy shut-down: CAU runs one PreUpdateScript and one "
                             "PostUpdateScript, and hci-upgrade's stop and start the VMs; set WorkloadPolicy: "
                             "live-migrate to run yours, or drop them")
        return self

    @field_validator("stop_after", "warn_after")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v.total_seconds() <= 0:
            raise ValueError("a duration after which the run stops or warns must be positive, e.g. 04:00:00")
        return v

    def check_against(self, cluster: ClusterInventory) -> RunOptions:
        """Options that name nodes must name nodes of the cluster: refused before anything connects. Returns the
        options for this cluster: its target release from the inventory unless the options name one."""
        if self.target_release and cluster.target_release and self.target_release != cluster.target_release:
            raise InputError(f"TargetRelease: the run options say {self.target_release}, the inventory says "
                             f"{cluster.target_release} for cluster {cluster.name}; name one of them")
        names = [n.name for n in cluster.nodes]
        known = {n.lower() for n in names}
        for field, values in (("NodeOrder", self.node_order), ("restart_only", self.restart_only)):
            unknown = [v for v in values or [] if v.lower() not in known]
            if unknown:
                raise InputError(f"{field}: {unknown[0]!r} is not a node of cluster {cluster.name} (it has "
                                 f"{', '.join(names)}); fix the name or drop it")
        if self.target_release is None and cluster.target_release is not None:
            return self.model_copy(update={"target_release": cluster.target_release})
        return self

    @property
    def release(self) -> Release:
        """The target release (hciupgrade/targets.py): its build, minimums, prerequisites and sources."""
        return release(self.target_release)

    @property
    def goal_build(self) -> str:
        """The build a node must reach: target_build if given, else the release's build (the feature update) or
        its checker's minimum LCU (the cumulative update)."""
        if self.target_build:
            return self.target_build
        return self.release.lcu_minimum if self.update == "cumulative" else self.release.build

    @property
    def vm_policy(self) -> WorkloadPolicy:
        return self.workload_policy or self.release.workload_policy

    @property
    def shuts_down_vms(self) -> bool | None:
        """True when each node's VMs are shut down before its drain (None otherwise: the runbook's option rule).
        Not in a rolling restart, which remediation asks for with the VMs running."""
        return True if self.vm_policy == "shut-down" and self.restart_only is None else None

    @property
    def stage(self) -> str:
        """Which pass of the OS path this run is, for its run name and artifact keys: upgrade (the feature update),
        cumulative-update, or restart."""
        if self.restart_only is not None:
            return "restart"
        return "cumulative-update" if self.update == "cumulative" else "upgrade"

    @property
    def stages(self) -> bool:
        """Whether this run pre-stages setup on every node (PreStage, in a feature update run)."""
        return self.pre_stage and self.update == "feature" and self.restart_only is None

    @property
    def lcu_in_drain(self) -> bool | None:
        """True when each node also takes the cumulative update in its drain (None otherwise: the runbook's
        option rule)."""
        return True if self.cumulative_in_drain and self.update == "feature" and self.restart_only is None \
            else None

    @property
    def restart_timeout_minutes(self) -> float:
        """The restart's timeout: the feature update's when this run installs one, CAU's otherwise (a cumulative
        update, a rolling restart)."""
        feature = self.restart_only is None and self.update == "feature"
        return self.feature_update_reboot_timeout_minutes if feature else self.reboot_timeout_minutes

    def build_reached(self, build: str) -> bool:
        return at_least(build, self.goal_build)

    def failed_nodes_allowed(self, nodes: int) -> int:
        """CAU's default: about a third of the nodes (range 0 to N-1)."""
        return self.max_failed_nodes if self.max_failed_nodes is not None else nodes // 3


IRREVERSIBLE = ("functional-level", "storage-pool", "vm-versions")
# what an approval can cover: the irreversible steps, and the downtime of the offline path
ApprovedStep = Literal["functional-level", "storage-pool", "vm-versions", "offline", "solution-upgrade",
                       "cloud-management"]


class Approval(Strict):
    """An operator's approval of irreversible steps: who, why, which steps, where it was given. Recorded in the
    run record and the artifacts."""

    approver: str = Field(min_length=1, description="who approves (a name or an account)")
    reason: str = Field(min_length=1, description="why: a change ticket, a maintenance window")
    steps: list[ApprovedStep] = Field(default_factory=lambda: list(IRREVERSIBLE),
                                      description="which irreversible steps (or the offline path's downtime) are "
                                                  "approved")
    source: Literal["cli", "prefect-ui", "options"] = "cli"


RunOptions.model_rebuild()  # its approval field names Approval, defined after it


class NodeOutcome(Strict):
    node: str
    build_before: str | None = None
    build_after: str | None = None
    result: Literal["upgraded", "restarted", "skipped", "failed", "not-started"] = "not-started"
    attempts: int = 0
    error: str | None = None
    left_paused: bool = False
    refused: bool = Field(False, description="not started because of the node itself (paused by someone else, "
                                             "down): counts against MaxFailedNodes")
    storage_healthy: bool | None = Field(None, description="False: updated, but its resync did not finish in time")
    retryable: bool = Field(False, description="failed in a way one more run may get past: its session lost, or "
                                               "not back within its restart's timeout")

    @property
    def counts_as_failed(self) -> bool:
        return self.result == "failed" or self.refused


class RunOutcome(Strict):
    run_id: str
    cluster: str
    succeeded: bool
    nodes: list[NodeOutcome]
    error: str | None = None
    left_paused: list[str] = Field(default_factory=list, description="nodes a run of ours left paused or down")
    window_ended: bool = Field(False, description="StopAfter passed: stopped cleanly between nodes, to continue in "
                                                  "the next window")
    target: str = Field("", description="the target release and its build, e.g. '24H2 (26100)'")

    @property
    def end(self) -> str:
        """How the run ended, in the word the CLI, the flow run's state and the summary share: upgraded,
        restarted, window ended, cancelled or failed."""
        if self.window_ended:
            return "window ended"
        if self.succeeded:
            worked = [n.result for n in self.nodes if n.result not in ("skipped", "not-started")]
            return "restarted" if worked and all(r == "restarted" for r in worked) else "upgraded"
        return "cancelled" if (self.error or "").startswith("cancelled") else "failed"

    @property
    def retryable(self) -> bool:
        """Worth one more run after a cool-down: it failed, and every node that failed or was refused failed in a
        retryable way (a gate that refused, a node paused by someone else, a step the cluster refused: never)."""
        troubled = [n for n in self.nodes if n.counts_as_failed or (n.error and n.result == "not-started")]
        return (not self.succeeded and not self.window_ended and self.end != "cancelled" and bool(troubled)
                and all(n.retryable for n in troubled))

    @property
    def reason(self) -> str | None:
        """The failure in one short line, for a run's header: the first failed node with its step and cause (or
        the run's own reason), and the nodes left paused. The whole story is in the error and the log."""
        if self.error is None:
            return None
        failed = next((n for n in self.nodes if n.counts_as_failed and n.error), None)
        text = (failed.error if failed else self.error).split("; left paused or down by a run of ours")[0]
        text = text.splitlines()[0].strip()
        if failed and not text.startswith(failed.node):
            text = f"{failed.node}: {text}"
        if len(text) > 200:
            text = text[:197] + "..."
        return text + (f" (left paused: {', '.join(self.left_paused)})" if self.left_paused else "")
