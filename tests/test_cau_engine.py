"""Engine cau: Cluster-Aware Updating does the node work under hci-upgrade's preflight, plan, records and status.
The simulated CAU (hciupgrade/sim/cau.py) drains, installs, restarts and resumes node by node on the simulated
clock, logged by "CAU", so the same invariant checker judges it (reference/domain.md §1.2, §5)."""

from __future__ import annotations

import subprocess
import time

import pytest

from hciupgrade.sim.audit import check_invariants
from hciupgrade.sim.scenario import make_scenario
from tests.test_safety import Killed, cluster, engine, private_home  # noqa: F401 - autouse: records of its own

FAST = 5000


def cau_events(run) -> list[dict]:
    return [e for e in run.events if e.get("by") == "CAU"]


def test_cau_upgrades_every_node_through_its_clustered_role_and_the_report_matches_the_builds(run_upgrade):
    scenario = make_scenario(nodes=3, vms_per_node=1, time_factor=FAST, knobs={"second_hop": "allowed"})
    run = run_upgrade(scenario, engine="cau")
    assert run.outcome["succeeded"], run.outcome["error"]
    assert {run.node(n)["result"] for n in ("node1", "node2", "node3")} == {"upgraded"}
    assert {run.node(n)["build_after"] for n in ("node1", "node2", "node3")} == {scenario.cluster.target_build}
    # CAU did the node work: every drain, install and restart is CAU's, none hci-upgrade's
    touches = [e for e in run.events if e["kind"] in ("suspend", "install", "restart", "resume") and "by" in e]
    assert len(touches) == 3 * 4 and {e["by"] for e in touches} == {"CAU"}
    assert check_invariants(run.events, scenario, {"succeeded": True, "left_paused": []}, "CAU") == []


# --- in process: the real client and engine against the simulated CAU, with faults --------------------------------
ORDER = ["node1", "node2", "node3"]


def cau_cluster(**kw):
    knobs = {"second_hop": "allowed", **kw.pop("knobs", {})}
    return cluster(knobs=knobs, **kw)


def finish_cau(sim) -> None:
    """Let CAU's run reach its end on the simulated clock (after the engine stopped following it)."""
    deadline = time.monotonic() + 60
    while sim.cau.run is not None and sim.cau.run.status is None and time.monotonic() < deadline:
        time.sleep(0.002)
        sim.advance()


def cau_started(sim) -> list[dict]:
    return [e for e in sim.events if e["kind"] == "cau_run" and e["status"] == "started"]


def test_a_node_that_fails_under_cau_is_retried_by_cau_then_reported_and_the_others_go_on():
    sim = cau_cluster(faults=[{"node": "node2", "kind": "install_fails"}])
    outcome, _ = engine(sim, engine="cau", node_order=ORDER).run()
    assert not outcome.succeeded and outcome.error.startswith("PartiallyFailed")
    results = {n.node: n.result for n in outcome.nodes}
    assert results == {"node1": "upgraded", "node2": "failed", "node3": "upgraded"}
    node2 = next(n for n in outcome.nodes if n.node == "node2")
    assert "CAU" in node2.error and "failed to install" in node2.error
    # CAU's MaxRetriesPerNode (3): three installs on node2, each after a pause of its own, and node2 back in service
    assert sum(1 for e in sim.events if e["kind"] == "install" and e["node"] == "node2" and e.get("by") == "CAU") == 3
    assert sim.nodes["node2"].state.name == "Up" and outcome.left_paused == []
    assert check_invariants(sim.events, sim.scenario, outcome.model_dump(mode="json"), "CAU") == []


def test_cancelling_the_run_stops_caus_run_and_names_the_node_cau_still_had():
    sim = cau_cluster()

    def cancel_while_node1_installs(node, call):
        run = sim.cau.run
        if run is not None and run.status is None and run.current and run.current.status.name == "Installing" \
                and not getattr(cancel_while_node1_installs, "done", False):
            cancel_while_node1_installs.done = True
            raise KeyboardInterrupt

    run = engine(sim, {"before": cancel_while_node1_installs}, engine="cau", node_order=ORDER)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert any(e["kind"] == "cau_run" and e["status"] == "cancel-pending" for e in sim.events)  # Stop-CauRun
    cancelled = [e for e in run.recorder.events().to_dict(orient="records") if e["phase"] == "cau"
                 and e["status"] == "cancelled"]
    assert cancelled and "node1 (Installing)" in cancelled[0]["detail"]
    finish_cau(sim)
    # CAU stopped setup's first phase (it changes nothing until a restart) and brought node1 back
    assert sim.cau.reports[-1]["status"].name == "Canceled"
    assert sim.nodes["node1"].state.name == "Up" and sim.nodes["node1"].build == sim.scenario.cluster.build
    assert not any(e["kind"] == "restart" for e in sim.events)
    assert check_invariants(sim.events, sim.scenario, {"succeeded": False, "left_paused": []}, "CAU") == []
    # the next run meets CAU's lock: it names the recovery, and starts nothing
    again, _ = engine(sim, engine="cau").run()
    assert "RunFailed" in again.error and "ForceRecovery" in again.error and len(cau_started(sim)) == 1


def test_a_cau_run_already_in_progress_is_followed_to_its_end_never_started_again():
    from hciupgrade.sim.cau import ROLLING_UPGRADE, CauSettings

    sim = cau_cluster(knobs={"mixed_version_migration": "works"})  # their run live-migrates the VMs
    with sim.lock:  # someone else's run, from their own coordinator
        sim.cau.start(CauSettings(ROLLING_UPGRADE, {"PathToSetupMedia": r"C:\SetupFiles"}, node_order=ORDER,
                                  reboot_timeout_minutes=120), by="operator")
    calls: list[str] = []
    outcome, pre = engine(sim, {"before": lambda node, call: calls.append(str(call))}, engine="cau").run()
    assert outcome.succeeded, outcome.error
    assert len(cau_started(sim)) == 1 and not any("Start-CauUpdatingRun" in c for c in calls)
    assert any(f.check == "CAU run in progress" and f.ok for f in pre.findings)
    assert {n.result for n in outcome.nodes} == {"upgraded"}


def test_a_run_killed_while_following_cau_is_resumed_by_the_next_which_follows_the_same_cau_run():
    sim = cau_cluster()

    def die_after_node1(node, call):
        run = sim.cau.run
        if run is not None and run.index >= 1 and "Get-CauRun" in str(call):
            raise Killed()

    with pytest.raises(Killed):
        engine(sim, {"before": die_after_node1}, engine="cau", node_order=ORDER).run()
    outcome, _ = engine(sim, engine="cau").run()
    assert outcome.succeeded, outcome.error
    assert len(cau_started(sim)) == 1  # CAU's run was never started twice
    assert {n.build for n in sim.nodes.values()} == {sim.target_build}


def test_a_node_an_operator_paused_mid_run_is_left_alone_by_cau_and_reported():
    sim = cau_cluster()

    def operator_pauses_node3(node, call):
        run = sim.cau.run
        if run is not None and run.index == 1 and sim.nodes["node3"].state.name == "Up":
            with sim.lock:
                sim.operator_pause("node3")

    outcome, _ = engine(sim, {"before": operator_pauses_node3}, engine="cau", node_order=ORDER).run()
    node3 = next(n for n in outcome.nodes if n.node == "node3")
    assert node3.result == "failed" and "Paused (paused by operator)" in node3.error
    assert not [e for e in sim.events if e.get("node") == "node3" and e.get("by") == "CAU"
                and e["kind"] in ("suspend", "install", "restart", "resume")]
    assert sim.nodes["node3"].paused_by == "operator"
    assert check_invariants(sim.events, sim.scenario, outcome.model_dump(mode="json"), "CAU") == []


def test_the_cumulative_update_through_caus_hotfix_plugin_takes_every_node_to_the_minimum():
    sim = cau_cluster(build="10.0.25398.1486")
    outcome, _ = engine(sim, engine="cau", update="cumulative", hotfix_root_folder=r"\\fs1\CauHotfix").run()
    assert outcome.succeeded, outcome.error
    assert {n.build for n in sim.nodes.values()} == {sim.lcu_build}
    started = cau_started(sim)
    assert len(started) == 1 and started[0]["plugin"] == "Microsoft.HotfixPlugin"


def test_without_the_second_hop_the_cau_engine_refuses_up_front_naming_the_fix():
    sim = cluster()  # no delegation: CAU's role could not reach the other nodes
    outcome, pre = engine(sim, engine="cau").run()
    assert not outcome.succeeded and "second hop for CAU" in outcome.error and "CredSSP" in outcome.error
    assert not cau_started(sim) and sim.cau.role is None


def test_cau_options_that_only_our_engine_has_are_refused_before_anything_connects():
    from pydantic import ValidationError

    from hciupgrade.models import RunOptions

    for bad, named in (({"PreStage": True}, "PreStage"), ({"update": "cumulative"}, "HotfixRootFolderPath"),
                       ({"PreUpdateScript": r"C:\pre.ps1"}, "WorkloadPolicy")):
        with pytest.raises(ValidationError, match=named):
            RunOptions(Engine="cau", **bad)


def test_the_cli_upgrades_the_demo_cluster_with_engine_cau_and_shows_caus_report(tmp_path):
    from cli.simulate import pick_scenario
    from hciupgrade.sim.harness import SIM_USER
    from tests.conftest import CLI, serve_cluster
    from tests.test_crash_resume import read_events

    scenario = pick_scenario("demo").model_copy(update={"time_factor": 5000})
    options = tmp_path / "options.yaml"
    options.write_text("Engine: cau\npoll_seconds: 20\n")
    with serve_cluster(scenario, tmp_path, {"PREFECT_HOME": str(tmp_path / "prefect")}) as (inventory, env, events):
        done = subprocess.run([*CLI, "upgrade", "--inventory", str(inventory), "--options", str(options)], env=env,
                              capture_output=True, text=True, timeout=600)
        log = read_events(events)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Cluster-Aware Updating's report" in done.stdout and "Succeeded" in done.stdout
    builds = {e["node"]: e["new"] for e in log if e["kind"] == "build"}
    assert builds == {n.name: scenario.cluster.target_build for n in scenario.cluster.nodes}
    # CAU's changes judged by the same checker as ours; ours are none
    assert check_invariants(log, scenario, {"succeeded": True, "left_paused": []}, "CAU") == []
    assert not [e for e in log if e.get("by") == SIM_USER and e["kind"] in ("suspend", "restart", "install")]
    # VMs shut down before each drain and started after it (WorkloadPolicy shut-down through CAU's scripts)
    assert any(e["kind"] == "vm" and e.get("by") == "CAU" for e in log)


def test_test_cau_setups_findings_join_the_preflight_an_error_blocks_and_the_firewall_rule_only_warns():
    from tests.test_first_contact import with_node

    sim = with_node({"auto_update": "install", "remote_shutdown_rule": False}, second_hop="allowed")
    outcome, pre = engine(sim, engine="cau").run()
    found = {f.check: f for f in pre.findings if f.check.startswith("CAU setup")}
    auto = next(f for name, f in found.items() if "Automatic Updates" in name)
    firewall = next(f for name, f in found.items() if "Remote Shutdown" in name)
    assert auto.blocking and "node2" in auto.detail and not firewall.blocking  # CAU enables the rule itself
    assert not outcome.succeeded and "Automatic Updates" in outcome.error and not cau_started(sim)


def test_losing_sight_of_caus_run_stops_following_it_never_cau_itself():
    from hciupgrade.remote import NodeUnreachable

    sim = cau_cluster()

    def cut_off_after_node1(node, call):
        run = sim.cau.run
        if run is not None and run.index >= 1 and "Get-CauRun" in str(call):
            raise NodeUnreachable(node, "ConnectionError: connection failed")

    outcome, _ = engine(sim, {"before": cut_off_after_node1}, engine="cau", node_order=ORDER).run()
    assert not outcome.succeeded and "lost sight of CAU's run" in outcome.error and "run again" in outcome.error
    assert not any(e["kind"] == "cau_run" and e["status"] == "cancel-pending" for e in sim.events)
    finish_cau(sim)  # CAU went on by itself
    assert sim.cau.reports[-1]["status"].name == "Succeeded"
    assert {n.build for n in sim.nodes.values()} == {sim.target_build}
