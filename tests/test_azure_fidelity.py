"""The Azure side against a simulated ARM that lags as Azure does (hciupgrade/sim/arm.py, lags on by default):
each submit followed by its own operation and then by the resource once it moved past what was there before,
ECE's status words, stalls, lost answers never sent twice, the template's body, roles and edge devices. Each
test names the source of the behaviour it relies on."""

from __future__ import annotations

import httpx
import pytest

from hciupgrade.azure.arm import ArmClient, ArmError, SubmitUncertain
from hciupgrade.azure.operations import Budget, Stalled
from hciupgrade.azure.solution import AzureCluster
from hciupgrade.azure.target import AzureTarget, StaticToken
from hciupgrade.sim.arm import TEMPLATE_FIELDS, ArmFaults, FakeArm, _dig

FACTOR = 5000
TOKEN = "fidelity-arm-token"
UPDATE = "Solution10.2503.0.13"


def target(endpoint: str, **fields) -> AzureTarget:
    return AzureTarget(**{"subscription_id": "b8d594e5-51f3-4c11-9c54-a7771b81c712", "resource_group": "hci-rg",
                          "location": "westeurope", "key_vault": "hci-upgrade-kv",
                          "ip_pool": {"start": "192.168.10.50", "end": "192.168.10.55"},
                          "network": {"subnet_mask": "255.255.255.0", "gateway": "192.168.10.1",
                                      "dns_servers": ["192.168.10.5"]},
                          "node_addresses": {"node1": "192.168.10.11", "node2": "192.168.10.12"},
                          "domain_fqdn": "corp.contoso.com",
                          "credential": {"kind": "simulator", "token_env": "UNUSED"}, "endpoint": endpoint,
                          **fields})


@pytest.fixture
def arm():
    with FakeArm(token=TOKEN, time_factor=FACTOR) as fake:
        yield fake


def on(arm: FakeArm, faults: ArmFaults | None = None, *, transport: httpx.BaseTransport | None = None,
       budget: Budget | None = None, **fields) -> AzureCluster:
    arm.add_cluster("hci-demo", ["node1", "node2"], faults=faults)
    client = ArmClient(arm.endpoint, credential=StaticToken(TOKEN), time_factor=FACTOR, transport=transport)
    return AzureCluster(client, target(arm.endpoint, **fields), "hci-demo", ["node1", "node2"], budget=budget)


def events(arm: FakeArm, kind: str) -> list[dict]:
    return [e for e in arm.clusters["hci-demo"].events if e["kind"] == kind]


# --- operations followed to their end, views read once they moved -------------------------------------------------
def test_a_retried_apply_is_judged_by_its_own_run_not_by_the_failed_run_before_it(arm):
    # the run appears run_lag_s after the apply is accepted; until then the failed run is still the latest
    az = on(arm, ArmFaults(update_fails="Update node1", run_lag_s=600))
    first, _ = az.apply(UPDATE)
    assert first.properties.state == "Failed"
    arm.clusters["hci-demo"].faults.update_fails = None  # the cause fixed; InstallationFailed may be applied again
    second, done = az.apply(UPDATE)
    assert done == "applied" and second.properties.state == "Succeeded" and second.name != first.name
    assert arm.judge() == []


def test_an_apply_whose_operation_fails_before_any_run_exists_ends_with_the_operations_error(arm):
    az = on(arm, ArmFaults(fail_before_run="apply"))
    with pytest.raises(ArmError, match="PreconditionFailed"):
        az.apply(UPDATE)
    assert arm.judge() == []  # its operation read to its end, nothing applied twice


def test_a_deploy_whose_operation_fails_before_any_status_exists_ends_with_its_error(arm):
    az = on(arm, ArmFaults(fail_before_run="deploy"))
    setting = az.validate(None)
    with pytest.raises(ArmError, match="PreconditionFailed"):
        az.deploy(setting)


def test_a_fresh_operation_id_answering_404_is_read_again_within_its_grace_then_raised(arm):
    az = on(arm, ArmFaults(operation_404_s=10 ** 9))
    _, op = az.arm.begin("POST", f"{az.base}/updates/{UPDATE}/apply", "2024-04-01")
    read = az.arm.read_operation(op)
    assert read.state == "unread" and "404" in read.note  # ARM's replication lag: not the operation's end
    op.accepted_at -= 3600
    with pytest.raises(ArmError, match="404"):
        az.arm.read_operation(op, grace_s=600)


@pytest.mark.parametrize("words", ["ece", "arm"])
def test_status_words_in_both_styles_are_understood(arm, words):
    az = on(arm, ArmFaults(status_words=words))
    passed = az.validate(None)
    status = passed.properties.reported_properties.validation_status.status
    assert status == {"ece": "Success", "arm": "Succeeded"}[words]
    deployed, done = az.deploy(passed)
    assert done == "submitted" and deployed.properties.reported_properties.deployment_status.status == \
        {"ece": "Success", "arm": "Succeeded"}[words]
    again, done = az.deploy(deployed)
    assert done == "already deployed" and len(events(arm, "deploy_started")) == 1


def test_an_error_deploy_in_ece_words_is_a_failure(arm):
    az = on(arm, ArmFaults(deployment_fails="Create custom location"))
    setting, _ = az.deploy(az.validate(None))
    assert setting.properties.reported_properties.deployment_status.status == "Error"
    with pytest.raises(ArmError, match="the last Deploy failed"):
        az.deploy(setting)  # not "already deployed", not submitted again without resume
    assert len(events(arm, "deploy_started")) == 1


def test_a_step_stuck_in_progress_ends_the_follow_as_stalled_naming_the_step(arm):
    az = on(arm, ArmFaults(step_stuck="Deploy ARB VM"), budget=Budget(stall_s=3 * 3600))
    with pytest.raises(Stalled, match="Deploy Arc Resource Bridge > Deploy ARB VM has not changed"):
        az.deploy(az.validate(None))


def test_an_update_run_in_state_unknown_is_followed_not_failed(arm):
    az = on(arm, ArmFaults(run_unknown_s=3600))  # the run reads Unknown for its first hour
    run, _ = az.apply(UPDATE)
    assert run.properties.state == "Succeeded"


# --- submits sent once --------------------------------------------------------------------------------------------
class LoseAnswer(httpx.BaseTransport):
    """Forwards every request; the answer of the first POST is lost after Azure took it (a read timeout)."""

    def __init__(self) -> None:
        self.inner, self.posts, self.lost = httpx.HTTPTransport(), 0, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if not self.lost:
                self.lost = True
                response.read()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


class RefuseFirstConnect(httpx.BaseTransport):
    """The first POST never leaves (connection refused): it may be sent again."""

    def __init__(self) -> None:
        self.inner, self.refused = httpx.HTTPTransport(), False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and not self.refused:
            self.refused = True
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


def test_a_post_whose_answer_is_lost_is_not_sent_again_and_its_run_is_followed(arm):
    # azure-core's RetryPolicy never retries a POST after a read error; a second apply would meet 409
    lossy = LoseAnswer()
    az = on(arm, transport=lossy)
    run, done = az.apply(UPDATE)  # its answer lost: the run Azure started is found and followed
    assert lossy.posts == 1 and done == "applied" and run.properties.state == "Succeeded"
    assert len(events(arm, "update_applied")) == 1 and events(arm, "second_apply_refused") == []
    with pytest.raises(SubmitUncertain):  # the client's word for it, for a caller of begin()
        ArmClient(arm.endpoint, credential=StaticToken(TOKEN), transport=LoseAnswer()).begin(
            "POST", f"{az.base}/updates/Solution10.2504.1001.19/apply", "2024-04-01")


def test_a_post_that_never_left_is_sent_again(arm):
    az = on(arm, transport=RefuseFirstConnect())
    run, done = az.apply(UPDATE)
    assert done == "applied" and len(events(arm, "update_applied")) == 1


# --- the template's body, roles, edge devices ---------------------------------------------------------------------
def test_the_deployment_settings_carry_what_the_upgrade_template_carries():
    client = ArmClient("https://management.usgovcloudapi.net", credential=StaticToken("x"))
    az = AzureCluster(client, target("https://management.usgovcloudapi.net"), "hci-demo", ["node1", "node2"])
    data = az.settings_body("Validate")["properties"]["deploymentConfiguration"]["scaleUnits"][0]["deploymentData"]
    assert [f for f in TEMPLATE_FIELDS if _dig(data, f) in (None, "", [])] == []
    assert data["physicalNodes"] == [{"name": "node1", "ipv4Address": "192.168.10.11"},
                                     {"name": "node2", "ipv4Address": "192.168.10.12"}]
    assert data["infrastructureNetwork"][0]["subnetMask"] == "255.255.255.0"
    assert data["secrets"][0]["secretLocation"] == ("https://hci-upgrade-kv.vault.usgovcloudapi.net/secrets/"
                                                   "hci-demo-AzureStackLCMUserCredential")  # that cloud's vault
    client.close()


@pytest.mark.parametrize("fields, words", [
    ({"ip_pool": {"start": "10.9.0.50", "end": "10.9.0.55"}}, "ip_pool.start: 10.9.0.50 is outside the management "
                                                              "subnet 192.168.10.0/24"),
    ({"node_addresses": {"node1": "192.168.10.51", "node2": "192.168.10.12"}},
     "node_addresses.node1: 192.168.10.51 is inside ip_pool"),
    ({"network": {"subnet_mask": "255.0.255.0", "gateway": "192.168.10.1", "dns_servers": ["192.168.10.5"]}},
     "subnet_mask: 255.0.255.0 is not a netmask"),
    ({"endpoint": "https://management.example.sovereign"}, "key_vault_suffix"),
    ({"naming_prefix": "HCI-TOO-LONG"}, "naming_prefix"),
])
def test_bad_azure_input_is_refused_naming_the_field(fields, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.").replace("(", r"\(")):
        target(fields.pop("endpoint", "https://management.azure.com"), **fields)


def test_the_upgrade_names_what_the_inventory_leaves_out():
    bare = AzureTarget(subscription_id="b8d594e5-51f3-4c11-9c54-a7771b81c712", resource_group="rg",
                       location="westeurope", key_vault="hci-upgrade-kv",
                       ip_pool={"start": "192.168.10.50", "end": "192.168.10.55"})
    problems = bare.upgrade_problems(["node1", "node2"])
    assert [p.split(":")[0] for p in problems] == ["azure.network", "azure.domain_fqdn", "azure.node_addresses"]
    assert "missing: node1, node2" in problems[2]


def test_missing_roles_are_reported_and_assigned_once(arm):
    az = on(arm, ArmFaults(missing_roles=True))
    found = {p.check: p for p in az.prerequisites([])}
    assert not found["roles of node1's identity"].ok
    assert "Key Vault Secrets User" in found["roles of node1's identity"].detail
    assert "--assign-roles" in found["roles of node1's identity"].detail
    made = az.assign_roles()
    assert len(made) == 6 and len(events(arm, "role_assigned")) == 6
    assert all(p.ok for p in az.prerequisites([]))
    assert az.assign_roles() == []  # nothing missing: nothing written


def test_failed_extension_and_disconnected_machine_are_failed_prerequisites(arm):
    az = on(arm, ArmFaults(extension_failed=True, machine_disconnected=True))
    found = {p.check: p for p in az.prerequisites([])}
    assert not found["LCM extension node2"].ok and "is Failed" in found["LCM extension node2"].detail
    assert not found["Arc machine node2"].ok and "Disconnected" in found["Arc machine node2"].detail
    assert found["LCM extension node1"].ok and found["Arc machine node1"].ok


@pytest.mark.parametrize("api_version, devices", [("2024-09-01-preview", 2), ("2024-04-01", 0)])
def test_edge_devices_are_created_before_a_validate_where_the_api_version_requires_them(arm, api_version, devices):
    az = on(arm, api_version=api_version)
    setting = az.validate(None)
    assert setting.properties.reported_properties.validation_status.status == "Success"
    kinds = [e["kind"] for e in arm.clusters["hci-demo"].events]
    assert kinds.count("edge_device") == devices
    assert "edge_device" not in kinds[kinds.index("validate_started"):]  # all of them before the Validate


def test_a_validate_without_edge_devices_at_the_2503_api_version_is_refused_by_the_simulator(arm):
    az = on(arm)
    with pytest.raises(ArmError, match="EdgeDeviceNotFound"):
        az.arm.begin("PUT", az.settings_path, "2024-09-01-preview", az.settings_body("Validate"))


# --- many CLIs on one machine -------------------------------------------------------------------------------------
def test_seven_clis_started_at_once_on_one_machine_all_succeed(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "concurrent_clis.py"
    spec = importlib.util.spec_from_file_location("concurrent_clis", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run_clis(7, tmp_path)
    assert [r["rc"] for r in results] == [0] * 7, [r["stderr"] for r in results]
    assert [r["updates"] for r in results] == [3] * 7
