"""A simulated Azure Resource Manager on loopback for the solution upgrade and the solution updates: the
Microsoft.AzureStackHCI paths of api-version 2024-04-01 (clusters, deploymentSettings, updates, updateRuns,
updateSummaries), the Arc machines with their extensions and the key vault, speaking ARM's HTTP: bearer tokens,
201/202 with Azure-AsyncOperation and Retry-After, operation status documents, nextLink paging with $skipToken,
429 with Retry-After, error documents {error: {code, message}} and x-ms-request-id on every response.

Step trees advance with the simulated clock (cluster seconds = wall seconds x time_factor): validation about 10
minutes, the Deploy of a ClusterUpgrade 2.5 to 3 hours with steps of 40-50 minutes (reference/anchors.md 2.5).
Failures are knobs: a validation step failing with an exception, a deployment step failing mid-way (a re-PUT
resumes from it, as the portal's resume does), 429 storms, a status URL that errors.

Azure's lags are on by default (the fidelity rule: where the sources leave doubt, the harsher behaviour), each a
knob of ArmFaults: a fresh operation id answers 404 for a while (ARM's replication lag: the async-operations doc
says a status read may fail and is not the operation's end); an update run appears some time after its apply is
accepted, and until then the update and its runs read as before (operations longer than a day are tracked by a
proxy resource the provider writes: RPC async-api-reference, updateRuns.json); deploymentSettings'
reportedProperties are written by the cluster later, so they keep the previous operation's trees after a PUT
(deploymentSettings.json marks them readOnly, reported by the device); ECE's status words (Success, Error,
InProgress: the spec's GetDeploymentSettings example) unless `status_words: arm`. The PUT's body is checked
against what the upgrade template carries (azure-quickstart-templates upgrade-cluster azuredeploy.json@15c284b4),
edge devices are required before a Validate at 2024-09-01-preview, and `judge()` reads the request log as a
reviewer would: no status read before its Retry-After, no read repeated back to back, every operation followed
to its end, nothing submitted twice."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from hciupgrade.azure.resources import API_VERSION

# (name, description, cluster minutes, sub-steps) of each tree
VALIDATION = [
    ("Validate Azure resources", "Key vault, deployment credential secret, Arc machines and their extensions", 2, [
        ("Check key vault", "The LCM deployment user's secret is readable", 1),
        ("Check Arc extensions", "AzureEdgeLifecycleManager on every node", 1)]),
    ("Configure permissions", "Role assignments for each Arc machine's identity, audit logging", 3, []),
    ("Run Environment Checker", "Connectivity, hardware, Active Directory, network, storage, upgrade readiness", 5, [
        ("Connectivity", "Outbound endpoints from every node", 2),
        ("Upgrade readiness", "AzStackHci_Upgrade_* checks", 3)]),
]
DEPLOYMENT = [
    ("Limited environment validation", "A first Environment Checker run", 8, []),
    ("Full environment validation", "The Environment Checker on every node", 15, []),
    ("Create infrastructure volume", "Infrastructure_1 (250 GB) in the pool", 10, []),
    ("Deploy Arc Resource Bridge", "The ARB appliance VM and its Kubernetes", 45, [
        ("Download ARB image", "", 15), ("Deploy ARB VM", "", 20), ("Connect ARB to Azure", "", 10)]),
    ("Create custom location", "<cluster>-cl", 10, []),
    ("Install Lifecycle Manager", "LCM and the cloud upgrade components on every node", 40, []),
    ("Upgrade cloud", "The solution's services, node by node", 40, []),
    ("Post-upgrade configuration", "Security baseline, Azure registration update", 10, []),
]


class ArmFaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validation_fails: str | None = Field(None, description="name of a validation step that fails with an exception")
    deployment_fails: str | None = Field(None, description="name of a deployment step that fails mid-way (once: "
                                                            "a resume re-PUT gets past it)")
    throttle_every: int = Field(0, ge=0, description="every Nth request is answered 429 (Retry-After 1), 0: never")
    throttle_storm: int = Field(0, ge=0, description="the first N requests are answered 429")
    status_errors: int = Field(0, ge=0, description="the first N reads of an operation status URL answer 500")
    update_fails: str | None = Field(None, description="a step of an update run that fails")
    unregistered: bool = Field(False, description="the cluster resource does not exist (Register-AzStackHCI not run)")
    old_extension: bool = Field(False, description="the LCM extension is below the required version on one node")
    missing_secret: bool = Field(False, description="the key vault has no LCM deployment-user secret")
    extension_failed: bool = Field(False, description="the LCM extension on the last node is provisioningState Failed")
    machine_disconnected: bool = Field(False, description="the last node's Arc machine is Disconnected")
    missing_roles: bool = Field(False, description="the Arc machines' identities have none of the template's roles")
    # Azure's lags and words (on by default, as Azure)
    operation_404_s: float = Field(30, ge=0, description="a fresh operation id answers 404 this long (cluster s)")
    run_lag_s: float = Field(120, ge=0, description="an update run appears this long after its apply is accepted")
    reported_lag_s: float = Field(90, ge=0, description="reportedProperties show the previous trees this long after "
                                                         "a PUT")
    # updateRuns.json's state enum starts with Unknown; how long a new run shows it is not documented
    # [UNVERIFIED]: on by default (harsher: a client that takes Unknown for an end fails here)
    run_unknown_s: float = Field(60, ge=0, description="a new update run's state reads Unknown this long")
    status_words: Literal["ece", "arm"] = Field("ece", description="the trees' overall status: Success/Error (ECE's, "
                                                                   "the spec's example) or Succeeded/Failed")
    # an LRO may end Failed with no resource written (ARM async-operations doc: the status document's error is
    # the verdict); the 60 s and the PreconditionFailed code are [UNVERIFIED] choices
    fail_before_run: Literal["apply", "validate", "deploy"] | None = Field(
        None, description="that operation fails before anything is written (no run, no reported change)")
    step_stuck: str | None = Field(None, description="a step (of any tree) that stays InProgress for ever")


@dataclass
class Running:
    """An operation in the simulator: its tree, when it started (cluster seconds), where it failed, and when what
    it writes (an update run, reportedProperties) becomes visible."""

    op_id: str
    kind: str  # validate, deploy, update
    tree: list[Any]
    started: float
    fail_step: str | None
    skip_until: int = 0  # a resumed deploy starts at this top-level step
    ended: float | None = None
    status: str = "InProgress"
    error: dict[str, str] | None = None
    update: str | None = None
    visible_at: float = 0.0
    stuck: str | None = None
    fails_early: bool = False  # the operation fails before anything is written
    seen_terminal: bool = False  # the client read its status once it had ended


@dataclass
class ArmState:
    subscription: str
    resource_group: str
    cluster: str
    nodes: list[str]
    location: str
    key_vault: str
    faults: ArmFaults
    operations: dict[str, Running] = field(default_factory=dict)
    setting: dict[str, Any] | None = None
    deploys: list[Running] = field(default_factory=list)
    validations: list[Running] = field(default_factory=list)
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, list[Running]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    status_reads: int = 0
    edge_devices: set[str] = field(default_factory=set)
    roles: dict[str, set[str]] = field(default_factory=dict)  # principal id -> role definition GUIDs

    @property
    def deploy(self) -> Running | None:
        return self.deploys[-1] if self.deploys else None

    @property
    def validation(self) -> Running | None:
        return self.validations[-1] if self.validations else None

    def principal(self, node: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.subscription}/{self.resource_group}/{node}"))


# the role definitions the upgrade template assigns each Arc machine's identity at resource-group scope
TEMPLATE_ROLES = ("865ae368-6a45-4bd1-8fbf-0d5151f56fc1", "4633458b-17de-408a-b874-0445c86b69e6",
                  "c99c945f-8bd1-4fb1-a903-01460aae6068")
# what the template's deploymentData carries: a PUT without one of them is refused, naming it
TEMPLATE_FIELDS = ("observability", "cluster.name", "storage.configurationMode", "namingPrefix", "domainFqdn",
                   "infrastructureNetwork.0.subnetMask", "infrastructureNetwork.0.gateway",
                   "infrastructureNetwork.0.ipPools.0.startingAddress", "infrastructureNetwork.0.dnsServers.0",
                   "physicalNodes.0.ipv4Address", "secrets.0.secretLocation", "optionalServices.customLocation")


def _dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(data, list):
            data = data[int(part)] if part.isdigit() and int(part) < len(data) else None
        elif isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _tree_at(tree: list[Any], elapsed_min: float, fail_step: str | None, skip: int, base: datetime,
             stuck: str | None = None) -> tuple[list[dict[str, Any]], str, str | None, float]:
    """Steps as the service reports them `elapsed_min` cluster minutes after `base` (the operation's start, in
    cluster time): (steps, overall status, the failing step's name or None, minutes of the whole tree). A `stuck`
    step never ends."""
    steps, clock, overall, failed = [], 0.0, "Succeeded", None
    total = sum(t[2] for t in tree[skip:])
    for index, (name, description, minutes, children) in enumerate(tree):
        if stuck in (name, *[c[0] for c in children]):
            minutes = math.inf
        step: dict[str, Any] = {"name": name, "description": description, "fullStepIndex": str(index + 1),
                                "status": None, "startTimeUtc": None, "endTimeUtc": None, "exception": [],
                                "steps": []}
        if index < skip:
            step["status"] = "Success"
        elif failed is None:
            start, end = clock, clock + minutes
            clock = end
            if elapsed_min >= start:
                step["startTimeUtc"] = (base + timedelta(minutes=start)).isoformat()
                halfway = start + minutes / 2
                if fail_step in (name, *[c[0] for c in children]) and elapsed_min >= halfway:
                    step["status"], step["endTimeUtc"] = "Error", (base + timedelta(minutes=halfway)).isoformat()
                    failed = fail_step
                    step["exception"] = [f"Type 'Invoke{name.replace(' ', '')}' of Role 'Cloud' raised an exception: "
                                         f"{name} failed on node1: the operation timed out after 45 minutes"]
                elif elapsed_min >= end:
                    step["status"], step["endTimeUtc"] = "Success", (base + timedelta(minutes=end)).isoformat()
                else:
                    step["status"] = "InProgress"
                    overall = "InProgress"
                sub_clock = start
                for c_index, (c_name, c_description, c_minutes) in enumerate(children):
                    c_minutes = math.inf if c_name == stuck else c_minutes
                    child = {"name": c_name, "description": c_description, "status": None,
                             "fullStepIndex": f"{index + 1}.{c_index + 1}", "steps": [], "exception": []}
                    if elapsed_min >= sub_clock:
                        if step["status"] == "Error" and c_name == fail_step:
                            child["status"], child["exception"] = "Error", step["exception"]
                        else:
                            child["status"] = "Success" if elapsed_min >= sub_clock + c_minutes else (
                                "Error" if step["status"] == "Error" else "InProgress")
                    sub_clock += c_minutes
                    step["steps"].append(child)
            elif overall != "InProgress":
                overall = "InProgress"
        steps.append(step)
    if failed:
        overall = "Failed"
    return steps, overall, failed, total


class FakeArm:
    """The HTTP server. One cluster resource (with its nodes' Arc machines) per simulated cluster."""

    def __init__(self, *, token: str, time_factor: float, faults: ArmFaults | None = None) -> None:
        self.token, self.time_factor = token, time_factor
        self.faults = faults or ArmFaults()
        self.clusters: dict[str, ArmState] = {}
        self.lock = threading.Lock()
        self._t0 = time.monotonic()
        self.requests = 0  # every request seen: what the throttling knobs count
        self.action_rules: dict[str, dict[str, Any]] = {}  # alert processing rules by id
        self.action_rule_log: list[tuple[str, str, Any]] = []  # (method, id, body) of each PUT and DELETE
        self.log: list[dict[str, Any]] = []  # every request with its answer, for judge()
        self._wall0 = datetime.now(UTC)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def now(self) -> float:
        """Cluster seconds since the simulator started."""
        return (time.monotonic() - self._t0) * self.time_factor

    def at(self, cluster_seconds: float) -> datetime:
        """A moment of the simulated clock as a UTC time (it started at the simulator's start)."""
        return self._wall0 + timedelta(seconds=cluster_seconds)

    def _tree(self, op: Running) -> tuple[list[dict[str, Any]], str, str | None, float]:
        return _tree_at(op.tree, (self.now() - op.started) / 60, op.fail_step, op.skip_until, self.at(op.started),
                        op.stuck)

    def add_cluster(self, name: str, nodes: list[str], *, subscription: str = "b8d594e5-51f3-4c11-9c54-a7771b81c712",
                    resource_group: str = "hci-rg", location: str = "westeurope",
                    key_vault: str = "hci-upgrade-kv", faults: ArmFaults | None = None) -> ArmState:
        state = ArmState(subscription, resource_group, name, nodes, location, key_vault, faults or self.faults)
        version = "Solution10.2411.3.2"
        state.updates = {
            n: {"state": s, "version": n.removeprefix("Solution"), "health": h} for n, s, h in
            (("Solution10.2411.3.2", "Installed", "Success"), ("Solution10.2503.0.13", "Ready", "Success"),
             ("Solution10.2504.1001.19", "HasPrerequisite", "Warning"))}
        if not state.faults.missing_roles:
            state.roles = {state.principal(n): set(TEMPLATE_ROLES) for n in nodes}
        state.events.append({"kind": "cluster", "version": version})
        with self.lock:
            self.clusters[name.lower()] = state
        return state

    def start(self) -> FakeArm:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-arm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeArm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the reviewer -----------------------------------------------------------------------------------------
    def judge(self, *, repeat_s: float = 30.0) -> list[str]:
        """What a reviewer of the request log would object to: a status read before the Retry-After its last
        answer gave (10 s after an error without one), a resource read again within `repeat_s` cluster seconds
        with nothing written between, an operation never read once it had ended, a submit refused because the
        same thing was already running."""
        findings: list[str] = []
        with self.lock:
            log = list(self.log)
            states = list(self.clusters.values())
        last: dict[str, tuple[float, float | None]] = {}  # path -> (time, the wait its answer asked for)
        wrote = -math.inf
        for r in log:
            if r["method"] != "GET":
                wrote = r["t"]
                continue
            path, previous = r["path"], last.get(r["path"])
            if previous is not None:
                t0, asked = previous
                gap = r["t"] - t0
                if asked is not None and gap < 0.9 * asked:
                    findings.append(f"GET {_short(path)} again after {gap:.0f} s, before the {asked:.0f} s its "
                                    "last answer asked for")
                elif asked is None and t0 > wrote and gap < repeat_s:
                    findings.append(f"GET {_short(path)} twice in {gap:.0f} s with nothing written between")
            status_url = "/operationStatuses/" in path
            asked = r["retry_after"] if r["retry_after"] is not None else (10.0 if r["status"] >= 400 or status_url
                                                                           else None)
            last[path] = (r["t"], asked)
        for state in states:
            for op in state.operations.values():
                if not op.seen_terminal:
                    findings.append(f"operation {op.kind} {op.op_id} ({state.cluster}) never followed to its end")
            findings += [f"{e['kind']} on {state.cluster}" for e in state.events
                         if e["kind"] in ("second_deploy_refused", "second_apply_refused",
                                          "validate_after_failed_deploy")]
        return findings

    # --- the service ------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        arm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("x-ms-request-id", str(uuid.uuid4()))
                corr = self.headers.get("x-ms-correlation-request-id")
                if corr:
                    self.send_header("x-ms-correlation-request-id", corr)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if data:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if self.headers.get("Authorization") != f"Bearer {arm.token}":
                    self._send(401, error("InvalidAuthenticationToken", "The access token is invalid or missing."))
                    return
                status, payload, headers = arm.route(method, self.path, body)
                with arm.lock:
                    arm.log.append({"t": arm.now(), "method": method, "path": self.path, "status": status,
                                    "retry_after": float(headers["Retry-After"]) if "Retry-After" in headers
                                    else None})
                self._send(status, payload, headers)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        return Handler

    def route(self, method: str, raw_path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        with self.lock:
            self.requests += 1
            n = self.requests
            if n <= self.faults.throttle_storm or (self.faults.throttle_every and n % self.faults.throttle_every == 0):
                return 429, error("TooManyRequests", "The request is being throttled."), {"Retry-After": "1"}
            if query.get("api-version", [None])[0] is None:
                return 400, error("MissingApiVersionParameter", "The api-version query parameter is required."), {}
            return self._route(method, parts.path, query, body)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any
               ) -> tuple[int, Any, dict[str, str]]:
        m = re.match(r"^/subscriptions/[^/]+/providers/Microsoft\.AzureStackHCI/locations/[^/]+/operationStatuses/"
                     r"(?P<op>[^/]+)$", path)
        if m:
            return self._operation(m["op"])
        m = re.match(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<rest>.+)$", path)
        if not m:
            return 404, error("InvalidResourceType", f"no route for {path}"), {}
        rest = m["rest"]
        c = re.match(r"^Microsoft\.AzureStackHCI/clusters/(?P<c>[^/]+)(?P<tail>/.*)?$", rest)
        if c:
            state = self.clusters.get(c["c"].lower())
            if state is None or state.faults.unregistered:
                return 404, error("ResourceNotFound", f"The Resource 'Microsoft.AzureStackHCI/clusters/{c['c']}' "
                                                      f"under resource group '{m['rg']}' was not found."), {}
            return self._cluster(state, method, c["tail"] or "", query, body)
        a = re.match(r"^Microsoft\.HybridCompute/machines/(?P<node>[^/]+)(?P<tail>/extensions|/providers/"
                     r"Microsoft\.AzureStackHCI/edgeDevices/default)?$", rest)
        if a:
            state = next((s for s in self.clusters.values() if a["node"] in s.nodes), None)
            if state is None:
                return 404, error("ResourceNotFound", f"machine {a['node']} not found"), {}
            last = a["node"] == state.nodes[-1]
            machine_id = f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{rest}"
            if a["tail"] == "/extensions":
                old = state.faults.old_extension and last
                return 200, {"value": [{"id": f"{machine_id}/AzureEdgeLifecycleManager",
                                        "name": "AzureEdgeLifecycleManager",
                                        "type": "Microsoft.HybridCompute/machines/extensions",
                                        "properties": {"publisher": "Microsoft.AzureStack.Orchestration",
                                                       "type": "LcmController",
                                                       "provisioningState": "Failed" if state.faults.extension_failed
                                                       and last else "Succeeded",
                                                       "typeHandlerVersion": "30.2405.0.32" if old else "30.2411.2.789"
                                                       }}]}, {}
            if a["tail"]:  # edgeDevices/default (CreateHciEdgeDevice.json, 2024-09-01-preview)
                return self._edge_device(state, a["node"], machine_id, method, body)
            return 200, {"id": machine_id, "name": a["node"], "type": "Microsoft.HybridCompute/machines",
                         "location": state.location,
                         "identity": {"type": "SystemAssigned", "principalId": state.principal(a["node"]),
                                      "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
                         "properties": {"status": "Disconnected" if state.faults.machine_disconnected and last
                                        else "Connected", "osVersion": "10.0.25398.1486",
                                        "osSku": "Azure Stack HCI"}}, {}
        k = re.match(r"^Microsoft\.KeyVault/vaults/(?P<kv>[^/]+)(/secrets/(?P<secret>[^/]+))?$", rest)
        if k:
            state = next((s for s in self.clusters.values() if s.key_vault == k["kv"]), None)
            if state is None or (k["secret"] and (state.faults.missing_secret or not k["secret"].endswith(
                    "AzureStackLCMUserCredential"))):
                return 404, error("ResourceNotFound", f"{rest} was not found"), {}
            return 200, {"id": f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{rest}",
                         "name": k["secret"] or k["kv"], "properties": {"attributes": {"enabled": True}}}, {}
        q = re.match(r"^Microsoft\.AlertsManagement/actionRules/(?P<name>[^/]+)$", rest)
        if q:
            return self._action_rule(f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/{rest}", method,
                                     query, body)
        r = re.match(r"^Microsoft\.Authorization/roleAssignments(/(?P<name>[^/]+))?$", rest)
        if r:
            state = next((s for s in self.clusters.values() if s.resource_group == m["rg"]), None)
            if state is None:
                return 404, error("ResourceGroupNotFound", f"resource group {m['rg']} not found"), {}
            return self._role_assignments(state, m["sub"], m["rg"], method, r["name"], query, body)
        return 404, error("InvalidResourceType", f"no route for {rest}"), {}

    # --- alert processing rules (azure-rest-api-specs alertsmanagement 2021-08-08 AlertProcessingRules.json) --------
    def _action_rule(self, rule_id: str, method: str, query: dict[str, list[str]], body: Any
                     ) -> tuple[int, Any, dict[str, str]]:
        """A synchronous resource: PUT 201 (created) or 200, GET 200 or 404, DELETE 200 or 204 (already gone).
        The body must carry scopes and actions, as the specification requires."""
        if query["api-version"][0] != "2021-08-08":
            return 400, error("NoRegisteredProviderFound", "No registered resource provider found for api version "
                                                           f"'{query['api-version'][0]}'."), {}
        name = rule_id.rsplit("/", 1)[-1]
        if method in ("PUT", "DELETE"):
            self.action_rule_log.append((method, rule_id, body))
        if method == "PUT":
            props = (body or {}).get("properties") or {}
            if not props.get("scopes") or not props.get("actions") or (body or {}).get("location") != "Global":
                return 400, error("InvalidRequestContent", "location Global, properties.scopes and "
                                                           "properties.actions are required."), {}
            created = rule_id not in self.action_rules
            self.action_rules[rule_id] = {"id": rule_id, "name": name,
                                          "type": "Microsoft.AlertsManagement/actionRules", **body}
            return (201 if created else 200), self.action_rules[rule_id], {}
        if method == "DELETE":
            return (200 if self.action_rules.pop(rule_id, None) else 204), None, {}
        found = self.action_rules.get(rule_id)
        if found is None:
            return 404, error("ResourceNotFound", f"The alert processing rule '{name}' was not found."), {}
        return 200, found, {}

    # --- Arc machines' edge devices and role assignments ----------------------------------------------------------
    def _edge_device(self, state: ArmState, node: str, machine_id: str, method: str, body: Any
                     ) -> tuple[int, Any, dict[str, str]]:
        doc = {"id": f"{machine_id}/providers/Microsoft.AzureStackHCI/edgeDevices/default", "name": "default",
               "type": "Microsoft.AzureStackHCI/edgeDevices", "kind": "HCI",
               "properties": {"provisioningState": "Succeeded", "reportedProperties": {"deviceState": "Connected"}}}
        if method == "PUT":
            if (body or {}).get("kind") != "HCI":
                return 400, error("InvalidKind", "an edge device of an Azure Local machine is kind HCI"), {}
            created = node not in state.edge_devices
            state.edge_devices.add(node)
            state.events.append({"kind": "edge_device", "node": node, "t": self.now()})
            return (201 if created else 200), doc, {}
        if node not in state.edge_devices:
            return 404, error("ResourceNotFound", "edgeDevices/default was not found"), {}
        return 200, doc, {}

    def _role_assignments(self, state: ArmState, sub: str, rg: str, method: str, name: str | None,
                          query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        """Microsoft.Authorization/roleAssignments at resource-group scope (api-version 2022-04-01): a list
        filtered by principalId, and a PUT that answers 409 RoleAssignmentExists for a pair already assigned."""
        scope = f"/subscriptions/{sub}/resourceGroups/{rg}"

        def doc(principal: str, role: str) -> dict[str, Any]:
            return {"id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/"
                          f"{uuid.uuid5(uuid.NAMESPACE_URL, principal + role)}",
                    "type": "Microsoft.Authorization/roleAssignments",
                    "properties": {"roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                                                       f"roleDefinitions/{role}", "principalId": principal,
                                   "principalType": "ServicePrincipal", "scope": scope}}

        if method == "PUT" and name:
            props = (body or {}).get("properties", {})
            principal, role = props.get("principalId", ""), str(props.get("roleDefinitionId", "")).rsplit("/", 1)[-1]
            if role in state.roles.get(principal, set()):
                # Azure RBAC (learn.microsoft.com troubleshooting role assignments): 409 RoleAssignmentExists
                return 409, error("RoleAssignmentExists", "The role assignment already exists."), {}
            state.roles.setdefault(principal, set()).add(role)
            state.events.append({"kind": "role_assigned", "principal": principal, "role": role, "t": self.now()})
            return 201, doc(principal, role), {}
        wanted = re.search(r"principalId eq '([^']+)'", query.get("$filter", [""])[0])
        pairs = [(p, r) for p, roles in state.roles.items() for r in sorted(roles)
                 if wanted is None or p == wanted.group(1)]
        return 200, {"value": [doc(p, r) for p, r in pairs]}, {}

    def _cluster(self, state: ArmState, method: str, tail: str, query: dict[str, list[str]], body: Any
                 ) -> tuple[int, Any, dict[str, str]]:
        base = (f"/subscriptions/{state.subscription}/resourceGroups/{state.resource_group}/providers/"
                f"Microsoft.AzureStackHCI/clusters/{state.cluster}")
        if tail == "" and method == "GET":
            return 200, {"id": base, "name": state.cluster, "type": "Microsoft.AzureStackHCI/clusters",
                         "location": state.location, "properties": {
                             "provisioningState": "Succeeded", "status": "ConnectedRecently",
                             "cloudId": str(uuid.uuid5(uuid.NAMESPACE_DNS, state.cluster))}}, {}
        if tail == "/deploymentSettings/default":
            if method == "PUT":
                return self._put_setting(state, base, body, query.get("api-version", [API_VERSION])[0])
            if state.setting is None:
                return 404, error("ResourceNotFound", "deploymentSettings/default was not found"), {}
            return 200, self._setting(state, base), {}
        if tail == "/updates" and method == "GET":
            names = sorted(state.updates)
            start = int(query.get("$skipToken", ["0"])[0])
            page = names[start:start + 2]
            result: dict[str, Any] = {"value": [self._update(state, base, n) for n in page]}
            if start + 2 < len(names):
                result["nextLink"] = f"{self.endpoint}{base}/updates?api-version={API_VERSION}&$skipToken={start + 2}"
            return 200, result, {}
        u = re.match(r"^/updates/(?P<name>[^/]+)(?P<tail>/apply|/updateRuns(/(?P<run>[^/]+))?)?$", tail)
        if u and u["name"] in state.updates:
            name = u["name"]
            if u["tail"] is None and method == "GET":
                return 200, self._update(state, base, name), {}
            if u["tail"] == "/apply" and method == "POST":
                return self._apply(state, name)
            if u["tail"] and u["tail"].startswith("/updateRuns") and method == "GET":
                runs = [self._run(state, base, name, r) for r in self._visible_runs(state, name)]
                if u["run"]:
                    found = [r for r in runs if r["name"].endswith(u["run"])]
                    return (200, found[0], {}) if found else (404, error("ResourceNotFound", "no such run"), {})
                return 200, {"value": runs}, {}
        if tail == "/updateSummaries/default" and method == "GET":
            installed = [n for n, u in state.updates.items() if self._update_state(state, n) == "Installed"]
            running = any(self._update_state(state, n) == "Installing" for n in state.updates)
            return 200, {"id": f"{base}/updateSummaries/default", "name": "default",
                         "type": "Microsoft.AzureStackHCI/clusters/updateSummaries", "properties": {
                             "state": "UpdateInProgress" if running else "UpdateAvailable",
                             "currentVersion": max(installed).removeprefix("Solution") if installed else None,
                             "healthState": "Success", "lastChecked": datetime.now(UTC).isoformat()}}, {}
        return 404, error("ResourceNotFound", f"{tail or 'cluster'} not found"), {}

    # --- deploymentSettings ---------------------------------------------------------------------------------------
    def _put_setting(self, state: ArmState, base: str, body: Any, api_version: str
                     ) -> tuple[int, Any, dict[str, str]]:
        props = (body or {}).get("properties", {})
        mode, operation = props.get("deploymentMode", "Deploy"), props.get("operationType", "ClusterProvisioning")
        if operation != "ClusterUpgrade":
            return 400, error("InvalidOperationType", "an upgraded cluster takes operationType ClusterUpgrade"), {}
        if not props.get("arcNodeResourceIds"):
            return 400, error("InvalidArcNodeResourceIds", "arcNodeResourceIds is required"), {}
        data = _dig(props, "deploymentConfiguration.scaleUnits.0.deploymentData") or {}
        absent = [f for f in TEMPLATE_FIELDS if _dig(data, f) in (None, "", [])]
        if absent:
            return 400, error("InvalidDeploymentSettings", f"deploymentData.{absent[0]} is required"), {}
        physical = data.get("physicalNodes", [])
        if any(not n.get("ipv4Address") for n in physical) or sorted(n.get("name") for n in physical) != sorted(
                state.nodes):
            return 400, error("InvalidDeploymentSettings", "physicalNodes must list every node with its "
                                                           "ipv4Address"), {}
        if api_version >= "2024-09-01" and mode == "Validate":
            missing = [n for n in state.nodes if n not in state.edge_devices]
            if missing:  # the 2503+ template creates them first (dependsOn edgeDevices)
                return 400, error("EdgeDeviceNotFound", f"Microsoft.AzureStackHCI/edgeDevices/default does not "
                                                        f"exist on the Arc machine {missing[0]}"), {}
        running = [op for op in (state.deploy, state.validation) if op is not None and not self._finished(op)]
        if running:
            state.events.append({"kind": "second_deploy_refused", "t": self.now()})
            return 409, error("DeploymentInProgress", "A deployment is in progress on this cluster."), {}
        previous = state.deploy
        if mode == "Validate" and previous is not None and previous.status == "Failed":
            # [UNVERIFIED] harsher: a cluster half-way through a failed upgrade is resumed in Deploy mode
            state.events.append({"kind": "validate_after_failed_deploy", "t": self.now()})
            return 409, error("DeploymentFailedResumeRequired", "The last deployment failed: resume it "
                                                                "(deploymentMode Deploy)."), {}
        kind = "validate" if mode == "Validate" else "deploy"
        op = Running(str(uuid.uuid4()), kind, VALIDATION if mode == "Validate" else DEPLOYMENT, self.now(),
                     state.faults.validation_fails if mode == "Validate" else state.faults.deployment_fails,
                     visible_at=self.now() + state.faults.reported_lag_s, stuck=state.faults.step_stuck,
                     fails_early=state.faults.fail_before_run == kind)
        if mode == "Deploy":
            if previous is not None and previous.status == "Failed" and previous.error:  # resume from the step
                op.skip_until = next(i for i, s in enumerate(DEPLOYMENT) if s[0] == previous.error.get("step")
                                     or previous.error.get("step") in [c[0] for c in s[3]])
                op.fail_step = None  # what failed has been fixed
                state.events.append({"kind": "deploy_resumed", "from": DEPLOYMENT[op.skip_until][0], "t": self.now()})
            else:
                state.events.append({"kind": "deploy_started", "t": self.now()})
            if not op.fails_early:
                state.deploys.append(op)
        else:
            if not op.fails_early:
                state.validations.append(op)
            state.events.append({"kind": "validate_started", "t": self.now()})
        state.operations[op.op_id] = op
        state.setting = {"properties": props}
        headers = {"Azure-AsyncOperation": self._op_url(state, op), "Retry-After": "10"}
        return 201, self._setting(state, base), headers

    def _op_url(self, state: ArmState, op: Running) -> str:
        return (f"{self.endpoint}/subscriptions/{state.subscription}/providers/Microsoft.AzureStackHCI/locations/"
                f"{state.location}/operationStatuses/{op.op_id}?api-version={API_VERSION}")

    def _finished(self, op: Running) -> bool:
        if op.fails_early:  # refused by the service a minute after it was accepted: nothing was written
            if op.ended is None and self.now() - op.started >= 60:
                op.ended, op.status = self.now(), "Failed"
                op.error = {"code": "PreconditionFailed", "message": f"The {op.kind} could not start: the "
                            "cluster's update service reported a failed precondition"}
            return op.ended is not None
        steps, overall, failed, total = self._tree(op)
        if overall != "InProgress" and op.ended is None:
            op.ended, op.status = self.now(), overall
            if failed:
                op.error = {"code": "DeploymentFailed" if op.kind != "update" else "UpdateRunFailed",
                            "message": f"Step '{failed}' failed", "step": failed}
        return overall != "InProgress"

    def _word(self, state: ArmState, overall: str) -> str:
        if state.faults.status_words == "ece":
            return {"Succeeded": "Success", "Failed": "Error"}.get(overall, overall)
        return overall

    def _status_tree(self, state: ArmState, ops: list[Running]) -> dict[str, Any] | None:
        """The trees the cluster has reported: the newest operation's once its lag has passed."""
        visible = [op for op in ops if op.visible_at <= self.now()]
        if not visible:
            return None
        op = visible[-1]
        steps, overall, _, _ = self._tree(op)
        self._finished(op)
        return {"status": self._word(state, overall), "steps": steps}

    def _setting(self, state: ArmState, base: str) -> dict[str, Any]:
        props = dict(state.setting["properties"]) if state.setting else {}
        running = any(op and not self._finished(op) for op in (state.deploy, state.validation))
        failed = any(op and op.status == "Failed" for op in (state.deploy, state.validation))
        props.update({"provisioningState": "Provisioning" if running else ("Failed" if failed else "Succeeded"),
                      "reportedProperties": {"validationStatus": self._status_tree(state, state.validations),
                                             "deploymentStatus": self._status_tree(state, state.deploys)}})
        return {"id": f"{base}/deploymentSettings/default", "name": "default",
                "type": "Microsoft.AzureStackHCI/clusters/deploymentSettings", "properties": props}

    def _operation(self, op_id: str) -> tuple[int, Any, dict[str, str]]:
        state = next((s for s in self.clusters.values() if op_id in s.operations), None)
        if state is None or self.now() - state.operations[op_id].started < state.faults.operation_404_s:
            return 404, error("OperationNotFound", f"operation {op_id} not found"), {}
        op = state.operations[op_id]
        state.status_reads += 1
        if state.status_reads <= self.faults.status_errors:
            return 500, error("InternalServerError", "Encountered an internal server error."), {"Retry-After": "5"}
        done = self._finished(op)
        doc: dict[str, Any] = {"id": f"operationStatuses/{op_id}", "name": op_id,
                               "status": op.status if done else "InProgress",
                               "startTime": self.at(op.started).isoformat()}
        if done:
            doc["endTime"] = self.at(op.ended or 0).isoformat()
            op.seen_terminal = True
        if op.error:
            doc["error"] = {k: v for k, v in op.error.items() if k != "step"}
        return 200, doc, {"Retry-After": "30"}

    # --- updates ------------------------------------------------------------------------------------------------
    def _visible_runs(self, state: ArmState, name: str) -> list[Running]:
        return [r for r in state.runs.get(name, []) if r.visible_at <= self.now()]

    def _update_state(self, state: ArmState, name: str) -> str:
        runs = self._visible_runs(state, name)
        if runs:
            self._finished(runs[-1])
            return {"InProgress": "Installing", "Succeeded": "Installed", "Failed": "InstallationFailed"}[
                runs[-1].status]
        return state.updates[name]["state"]

    def _update(self, state: ArmState, base: str, name: str) -> dict[str, Any]:
        spec = state.updates[name]
        checks = [{"name": "AzStackHci_Upgrade_StoragePoolVersion", "displayName": "Storage pool version",
                   "title": "Storage pool version", "status": "Succeeded", "severity": "Critical",
                   "description": "The pool is at version 28 or later", "healthCheckSource": "Test-AzureStack"}]
        if spec["health"] == "Warning":
            checks.append({"name": "AzStackHci_Hardware_Test_Solution_Builder_Extension", "displayName":
                           "Solution Builder Extension", "title": "SBE prerequisite", "status": "Failed",
                           "severity": "Warning", "description": "The SBE package for 2504 is not staged",
                           "remediation": "https://aka.ms/azloc-sbe", "healthCheckSource": "Test-AzureStack"})
        return {"id": f"{base}/updates/{name}", "name": name, "type": "Microsoft.AzureStackHCI/clusters/updates",
                "location": state.location, "properties": {
                    "provisioningState": "Succeeded", "state": self._update_state(state, name),
                    "displayName": f"Azure Local {spec['version']}", "version": spec["version"],
                    "healthState": spec["health"], "healthCheckResult": checks,
                    "healthCheckDate": datetime.now(UTC).isoformat(), "rebootRequired": "True",
                    "packageSizeInMb": 18858, "availabilityType": "Online", "publisher": "Microsoft"}}

    def _apply(self, state: ArmState, name: str) -> tuple[int, Any, dict[str, str]]:
        in_flight = [op for op in state.operations.values() if op.kind == "update" and not self._finished(op)]
        if in_flight:  # the update state NotApplicableBecauseAnotherUpdateIsInProgress (updates.json)
            state.events.append({"kind": "second_apply_refused", "update": name, "t": self.now()})
            return 409, error("UpdateInProgress", "Another update operation is in progress on this cluster."), {}
        if self._update_state(state, name) not in ("Ready", "ReadyToInstall", "InstallationFailed"):
            return 400, error("UpdateNotReady", f"{name} is {self._update_state(state, name)}: it cannot be "
                                                "applied"), {}
        tree = [("PreUpdate Cloud", "Prepare for the update", 20, []),
                ("Update host OS", "Cluster-Aware Updating, node by node", 30 * len(state.nodes),
                 [(f"Update {n}", f"Drain, install, restart {n}", 30) for n in state.nodes]),
                ("Update cloud services", "LCM and the solution's services", 40, []),
                ("PostUpdate", "Health checks after the update", 10, [])]
        op = Running(str(uuid.uuid4()), "update", tree, self.now(), state.faults.update_fails, update=name,
                     visible_at=self.now() + state.faults.run_lag_s, stuck=state.faults.step_stuck,
                     fails_early=state.faults.fail_before_run == "apply")
        if not op.fails_early:
            state.runs.setdefault(name, []).append(op)
        state.operations[op.op_id] = op
        state.events.append({"kind": "update_applied", "update": name, "t": self.now()})
        return 202, None, {"Azure-AsyncOperation": self._op_url(state, op), "Retry-After": "10"}

    def _run(self, state: ArmState, base: str, name: str, op: Running) -> dict[str, Any]:
        steps, overall, _, _ = self._tree(op)
        self._finished(op)
        started = self.at(op.started)
        young = self.now() - op.visible_at < state.faults.run_unknown_s
        run_state = "Unknown" if young and overall == "InProgress" else overall  # updateRuns.json's state enum
        return {"id": f"{base}/updates/{name}/updateRuns/{op.op_id}", "name": f"{name}/{op.op_id}",
                "type": "Microsoft.AzureStackHCI/clusters/updates/updateRuns", "location": state.location,
                "properties": {"provisioningState": "Succeeded", "state": run_state,
                               "timeStarted": started.isoformat(), "lastUpdatedTime": datetime.now(UTC).isoformat(),
                               "progress": {"name": "Unnamed step", "description": f"Update Azure Local to {name}",
                                            "status": {"Succeeded": "Success", "Failed": "Error"}.get(overall,
                                                                                                      "InProgress"),
                                            "steps": steps}}}


def _short(path: str) -> str:
    return path.split("?", 1)[0].rsplit("/providers/", 1)[-1]


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
