"""The solution upgrade and the solution updates through Azure Resource Manager, against the simulated ARM
(hciupgrade/sim/arm.py): the client's conventions (tokens, long-running operations, Retry-After, 429, paging,
status URLs that fail), the prerequisites read before anything is written, Validate, the approval, Deploy followed
to its end, a crash mid-deployment and a rerun that follows the running Deploy, a failed step and its resume, and
updates applied and followed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from hciupgrade.azure.arm import ArmClient, ArmError
from hciupgrade.azure.solution import AzureCluster, updates_table
from hciupgrade.azure.target import AzureTarget, StaticToken
from hciupgrade.sim.arm import ArmFaults, FakeArm
from hciupgrade.sim.harness import SimHarness
from hciupgrade.sim.scenario import make_scenario
from tests.conftest import CLI

FACTOR = 5000
TOKEN = "sim-arm-token-9f2c"


def target(arm: FakeArm, **fields) -> AzureTarget:
    return AzureTarget(subscription_id="b8d594e5-51f3-4c11-9c54-a7771b81c712", resource_group="hci-rg",
                       location="westeurope", endpoint=arm.endpoint, key_vault="hci-upgrade-kv",
                       ip_pool={"start": "192.168.10.50", "end": "192.168.10.55"},
                       network={"subnet_mask": "255.255.255.0", "gateway": "192.168.10.1",
                                "dns_servers": ["192.168.10.5"]},
                       node_addresses={"node1": "192.168.10.11", "node2": "192.168.10.12"},
                       domain_fqdn="corp.contoso.com",
                       credential={"kind": "simulator", "token_env": "UNUSED"}, **fields)


@pytest.fixture
def arm():
    with FakeArm(token=TOKEN, time_factor=FACTOR) as fake:
        yield fake


def cluster_on(arm: FakeArm, faults: ArmFaults | None = None, **client) -> AzureCluster:
    arm.add_cluster("hci-demo", ["node1", "node2"], faults=faults)
    return AzureCluster(ArmClient(arm.endpoint, credential=StaticToken(TOKEN), time_factor=FACTOR, **client),
                        target(arm), "hci-demo", ["node1", "node2"])


# --- the client ---------------------------------------------------------------------------------------------------
def test_plain_http_and_a_missing_credential_are_refused_except_to_a_loopback_simulator():
    with pytest.raises(ValueError, match="https"):
        ArmClient("http://management.azure.com", credential=StaticToken("x"))
    with pytest.raises(ValueError, match="credential is required"):
        ArmClient("https://management.azure.com", credential=None)
    ArmClient("http://127.0.0.1:1", credential=None).close()  # the simulator


def test_throttling_and_failing_status_reads_are_retried_and_the_operation_still_succeeds(arm):
    faults = ArmFaults(throttle_storm=4, status_errors=3, throttle_every=9)
    az = cluster_on(arm, faults)
    arm.faults = faults  # the storm applies to every request
    setting = az.validate(None)
    assert setting.properties.reported_properties.validation_status.status == "Success"  # ECE's word
    assert arm.clusters["hci-demo"].status_reads > 3  # three 500s from the status URL, then read again


def test_lists_follow_next_link_with_its_own_skip_token(arm):
    az = cluster_on(arm)
    names = [u.name for u in az.updates()]  # two per page: the second page only through $skipToken
    assert names == ["Solution10.2411.3.2", "Solution10.2503.0.13", "Solution10.2504.1001.19"]


def test_the_token_is_refreshed_before_it_expires_and_never_reaches_an_error(arm):
    from azure.core.credentials import AccessToken

    class Expiring:
        calls = 0

        def get_token(self, *scopes, **kwargs):
            Expiring.calls += 1
            assert scopes == ("https://management.azure.com/.default",)
            return AccessToken(TOKEN, int(time.time()) + 120)  # inside the five-minute margin: fetch again

    arm.add_cluster("hci-demo", ["node1", "node2"])
    client = ArmClient(arm.endpoint, credential=Expiring(), time_factor=FACTOR)
    client.get(AzureCluster(client, target(arm), "hci-demo", []).base, "2024-04-01")
    client.get(AzureCluster(client, target(arm), "hci-demo", []).base, "2024-04-01")
    assert Expiring.calls == 2
    wrong = ArmClient(arm.endpoint, credential=StaticToken("a-wrong-secret-token"), time_factor=FACTOR)
    with pytest.raises(ArmError) as failed:
        wrong.get("/subscriptions/x/resourceGroups/y/providers/Microsoft.AzureStackHCI/clusters/hci-demo",
                  "2024-04-01")
    assert failed.value.status == 401 and "InvalidAuthenticationToken" in str(failed.value)
    assert "a-wrong-secret-token" not in str(failed.value) and "x-ms-correlation-request-id" in str(failed.value)


def test_open_enums_keep_values_the_service_adds():
    from hciupgrade.azure.resources import Update

    update = Update.model_validate({"name": "Solution12.2601.1002.38", "properties": {
        "state": "PendingOEMValidation", "healthState": "SomethingNew", "futureField": 1}})
    assert update.properties.state == "PendingOEMValidation" and update.properties.model_extra["futureField"] == 1


# --- prerequisites ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("faults, check, words", [
    (ArmFaults(unregistered=True), "cluster resource", "Register-AzStackHCI"),
    (ArmFaults(old_extension=True), "LCM extension node2", "30.2405.0.32 < 30.2408.0.537"),
    (ArmFaults(missing_secret=True), "LCM deployment-user secret", "hci-demo-AzureStackLCMUserCredential"),
])
def test_prerequisites_are_read_and_reported_before_anything_is_written(arm, faults, check, words):
    az = cluster_on(arm, faults)
    found = {p.check: p for p in az.prerequisites([])}
    assert not found[check].ok and words in found[check].detail
    assert all(p.ok for name, p in found.items() if name != check)
    assert not [e for e in arm.clusters["hci-demo"].events if e["kind"] != "cluster"]  # nothing written


def test_a_critical_readiness_finding_and_a_bad_pool_block_before_azure_is_touched(arm):
    az = cluster_on(arm)
    found = {p.check: p for p in az.prerequisites(["AzStackHci_Upgrade_StoragePoolVersion"])}
    assert not found["readiness"].ok and "StoragePoolVersion" in found["readiness"].detail
    with pytest.raises(ValueError, match="cluster IP 192.168.10.52 is inside it"):
        target(arm, cluster_ip="192.168.10.52")
    with pytest.raises(ValueError, match="holds 5 addresses"):
        AzureTarget(**{**target(arm).model_dump(), "ip_pool": {"start": "10.0.0.1", "end": "10.0.0.5"}})


# --- the flow ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def served(prefect_server, tmp_path):
    """A simulated cluster, already on 23H2, registered with a simulated Azure; yields (inventory, harness)."""
    harnesses = []

    def make(arm_factor: float = FACTOR, **faults) -> tuple[Path, SimHarness]:
        # one clock for both sides: the client's deadlines and stall budgets count in the cluster's seconds
        scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=arm_factor, build="10.0.25398.1913",
                                 functional_level=12, pool_version=29)
        scenario = scenario.model_copy(update={"azure": ArmFaults(**faults)})
        fake = FakeArm(token=TOKEN, time_factor=arm_factor, faults=scenario.azure).start()
        harness = SimHarness(scenario, azure=fake).__enter__()
        harnesses.append(harness)
        os.environ.update(harness.environment())
        path = tmp_path / "inventory.yaml"
        harness.inventory().write(path)
        return path, harness

    yield make
    for h in harnesses:
        h.__exit__(None, None, None)
        h.azure.stop()


def kinds(harness: SimHarness) -> list[str]:
    return [e["kind"] for e in harness.azure.clusters["hci-demo"].events]


def test_without_an_approval_the_run_validates_and_waits_with_nothing_deployed(served):
    from flows.solution import solution_upgrade

    inventory, harness = served()
    result = solution_upgrade(inventory=str(inventory), wait_for_approval=False, check_readiness=False)
    assert result["awaiting_approval"] and not result["succeeded"] and result["error"] is None
    assert [r["step"].strip() for r in result["validation"]][:2] == ["Validation", "Validate Azure resources"]
    assert {r["status"] for r in result["validation"]} == {"Success"}  # ECE's words, the overall one too
    assert "deploy_started" not in kinds(harness)


def test_an_approved_run_deploys_follows_the_tree_and_records_the_approval(served):
    from flows.solution import solution_upgrade
    from hciupgrade.models import Approval
    from tests.conftest import record_text

    inventory, harness = served()
    approval = Approval(approver="alice", reason="CHG-77", steps=["solution-upgrade"])
    result = solution_upgrade(inventory=str(inventory), approval=approval, check_readiness=True)
    assert result["succeeded"], result["error"]
    assert result["deploy"] == "submitted" and kinds(harness).count("deploy_started") == 1
    steps = [r["step"].strip() for r in result["deployment"]]
    assert "Deploy Arc Resource Bridge" in steps and "Connect ARB to Azure" in steps
    record = record_text(result["run_id"])
    assert '"approver": "alice"' in record and '"reason": "CHG-77"' in record
    assert '"step": "Deployment > Deploy Arc Resource Bridge"' in record  # step-level events
    assert harness.azure.token not in record
    assert harness.azure.judge() == []  # no hot polling, each operation read to its end, nothing sent twice


def test_a_failing_validation_step_names_its_exception_and_nothing_is_deployed(served):
    from flows.solution import solution_upgrade
    from hciupgrade.models import Approval

    inventory, harness = served(validation_fails="Upgrade readiness")
    result = solution_upgrade(inventory=str(inventory), approval=Approval(approver="a", reason="r"),
                              check_readiness=False)
    assert result["error"].startswith("validation failed (Error): Upgrade readiness: "
                                      "Type 'InvokeRunEnvironmentChecker'")
    assert "deploy_started" not in kinds(harness)


def test_a_failed_deployment_step_is_named_and_resume_submits_again_from_it(served):
    from flows.solution import solution_upgrade
    from hciupgrade.models import Approval

    inventory, harness = served(deployment_fails="Deploy ARB VM")
    approval = Approval(approver="a", reason="r", steps=["solution-upgrade"])
    failed = solution_upgrade(inventory=str(inventory), approval=approval, check_readiness=False)
    assert failed["error"].startswith("deployment failed (Error) at Deploy ARB VM: "
                                      "Type 'InvokeDeployArcResourceBridge'")
    assert "hci-upgrade solution --resume" in failed["error"]
    again = solution_upgrade(inventory=str(inventory), approval=approval, check_readiness=False)
    assert again["error"].startswith("the last Deploy failed")  # not re-submitted without --resume
    resumed = solution_upgrade(inventory=str(inventory), approval=approval, check_readiness=False, resume=True)
    assert resumed["succeeded"] and resumed["deploy"] == "resumed"
    events = harness.azure.clusters["hci-demo"].events
    assert [e.get("from") for e in events if e["kind"] == "deploy_resumed"] == ["Deploy Arc Resource Bridge"]
    # resumed in Deploy mode, not validated again on a half-upgraded cluster; the stale Failed status the
    # cluster still reported after the resume's PUT (reported_lag_s) did not end the follow
    assert kinds(harness).count("validate_started") == 1 and harness.azure.judge() == []


def test_a_stalled_deploy_ends_as_stalled_and_the_rerun_follows_it_without_submitting(served):
    from flows.solution import solution_upgrade
    from hciupgrade.models import Approval

    inventory, harness = served(step_stuck="Install Lifecycle Manager")
    approval = Approval(approver="a", reason="r", steps=["solution-upgrade"])
    first = solution_upgrade(inventory=str(inventory), approval=approval, check_readiness=False)
    assert first["stage"] == "stalled" and "Install Lifecycle Manager has not changed for" in first["error"]
    again = solution_upgrade(inventory=str(inventory), approval=approval, check_readiness=False)
    assert again["stage"] == "stalled" and kinds(harness).count("deploy_started") == 1


def test_a_crash_mid_deployment_is_followed_by_the_rerun_never_deployed_twice(served, tmp_path):
    inventory, harness = served(arm_factor=600)  # a Deploy of about 18 s: the rerun finds it running
    env = {**os.environ, "HCI_UPGRADE_HOME": str(tmp_path / "home")}
    command = [*CLI, "solution", "--inventory", str(inventory), "--approve", "--reason", "CHG-9", "--json"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while "deploy_started" not in kinds(harness):
        assert time.monotonic() < deadline and first.poll() is None, "the Deploy never started"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the orchestrator dies; Azure goes on
    first.wait()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads(second.stdout)
    assert result["deploy"] == "followed" and result["succeeded"]
    assert kinds(harness).count("deploy_started") == 1 and "second_deploy_refused" not in kinds(harness)
    from flows.solution import solution_upgrade

    third = solution_upgrade(inventory=str(inventory), check_readiness=False)  # no approval needed for nothing
    assert third["deploy"] == "already deployed" and kinds(harness).count("deploy_started") == 1


def test_the_cli_refuses_bad_input_and_waits_for_an_approval_with_exit_3(served, tmp_path):
    inventory, harness = served()
    env = {**os.environ, "HCI_UPGRADE_HOME": str(tmp_path / "home")}
    no_reason = subprocess.run([*CLI, "solution", "--inventory", str(inventory), "--approve"], env=env,
                               capture_output=True, text=True, timeout=60)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    waits = subprocess.run([*CLI, "solution", "--inventory", str(inventory), "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert waits.returncode == 3, waits.stderr[-2000:]
    assert json.loads(waits.stdout)["stage"] == "awaiting approval"
    import yaml

    bare = yaml.safe_load(inventory.read_text())
    del bare["clusters"][0]["azure"]["network"]
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(bare))
    refused = subprocess.run([*CLI, "solution", "--inventory", str(tmp_path / "bare.yaml")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "azure.network" in refused.stderr and "subnet_mask" in refused.stderr
    roles = subprocess.run([*CLI, "solution", "--inventory", str(inventory), "--assign-roles"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert roles.returncode == 2 and "--assign-roles needs --approve" in roles.stderr


# --- updates -----------------------------------------------------------------------------------------------------
def test_updates_are_summarised_applied_and_followed_and_a_running_one_is_not_applied_twice(served):
    from flows.solution import solution_updates

    inventory, harness = served()
    listed = solution_updates(inventory=str(inventory))
    states = {u["update"]: (u["state"], u["warnings"]) for u in listed["updates"]}
    assert states == {"Solution10.2411.3.2": ("Installed", 0), "Solution10.2503.0.13": ("Ready", 0),
                      "Solution10.2504.1001.19": ("HasPrerequisite", 1)}
    # an apply whose orchestrator died right after the POST was recorded: the rerun follows that operation,
    # although Azure shows no run of it yet (run_lag_s) and the update still reads Ready
    from hciupgrade.azure.operations import Ledger
    from hciupgrade.records import RunRecorder, new_run_id

    az = AzureCluster(ArmClient(harness.azure.endpoint, credential=StaticToken(TOKEN), time_factor=FACTOR),
                      target(harness.azure), "hci-demo", ["node1", "node2"],
                      ledger=Ledger(RunRecorder(new_run_id(), "hci-demo", time_factor=FACTOR)))
    az._submit("apply", az.update_key("Solution10.2503.0.13"), "POST", f"{az.base}/updates/Solution10.2503.0.13/apply",
               "2024-04-01", None, [])
    applied = solution_updates(inventory=str(inventory), apply="Solution10.2503.0.13")
    assert applied["applied"]["hci-demo"] == {"update": "Solution10.2503.0.13", "done": "followed",
                                              "state": "Succeeded", "error": None}
    assert kinds(harness).count("update_applied") == 1 and harness.azure.judge() == []
    table = updates_table("hci-demo", az.updates())
    assert table.set_index("update").loc["Solution10.2503.0.13", "state"] == "Installed"
    with pytest.raises(ArmError, match="HasPrerequisite"):
        az.apply("Solution10.2504.1001.19")
    from hciupgrade.azure.solution import fleet_updates

    two = updates_table("hci-demo", az.updates())
    fleet = fleet_updates(pd.concat([two, two.assign(cluster="hci-other")])).set_index("update")
    assert fleet.loc["Solution10.2503.0.13", ["clusters", "Installed"]].tolist() == [2, 2]
    assert fleet.loc["Solution10.2504.1001.19", "HasPrerequisite"] == 2


def test_http_errors_carry_the_request_ids(arm):
    az = cluster_on(arm)
    with pytest.raises(ArmError) as missing:
        az.arm.get(f"{az.base}/updates/NoSuch", "2024-04-01")
    assert missing.value.status == 404 and "x-ms-request-id" in str(missing.value)


def test_sim_serve_serves_the_azure_side_beside_the_winrm_endpoints(tmp_path):
    import yaml

    from hciupgrade.sim.harness import ARM_TOKEN_ENV, PASSWORD_ENV

    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=FACTOR, build="10.0.25398.1913",
                             functional_level=12, pool_version=29)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    env = {**os.environ, PASSWORD_ENV: "serve-secret", ARM_TOKEN_ENV: "serve-arm-token",
           "HCI_UPGRADE_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    inventory = tmp_path / "inv.yaml"
    serve = subprocess.Popen([*CLI, "sim", "serve", "--azure", "--scenario", str(tmp_path / "s.yaml"),
                              "--inventory-out", str(inventory)], env=env, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not inventory.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        served = yaml.safe_load(inventory.read_text())["clusters"][0]["azure"]
        assert served["endpoint"].startswith("http://127.0.0.1:") and "serve-arm-token" not in inventory.read_text()
        validated = subprocess.run([*CLI, "solution", "--inventory", str(inventory), "--validate-only", "--json"],
                                   env=env, capture_output=True, text=True, timeout=300)
        assert validated.returncode == 0, validated.stderr[-2000:]
        assert json.loads(validated.stdout)["stage"] == "validated"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=20)
