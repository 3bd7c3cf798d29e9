"""The step registry (hciupgrade/upgrade/runbook.py): every step has its code and its timeout, every row of the position
table names steps the registry knows, in the order a node goes through them, and what an operator sees (the
records' phases, the CLI's columns, the task timeouts) comes from it."""

from __future__ import annotations

import pytest

from hciupgrade.models import RunOptions
from hciupgrade.upgrade.positions import DECISIONS, Mode, Position
from hciupgrade.upgrade.runbook import FULL, PHASES, RESTART, STEPS, Ownership, timeout_minutes, wanted
from hciupgrade.upgrade.steps import Steps

OPTIONS = RunOptions(gate_timeout_minutes=7, drain_timeout_minutes=11, install_timeout_minutes=240,
                     repair_timeout_minutes=600)
RESTART_MINUTES = OPTIONS.restart_timeout_minutes  # the feature update's restart timeout (a property)


@pytest.mark.parametrize("name", list(STEPS))
def test_every_step_has_a_method_and_a_timeout(name):
    spec = STEPS[name]
    assert callable(getattr(Steps, spec.method, None)), f"Steps.{spec.method} is missing"
    expected = {"gate": 7, "drain": 22, "install": 240, "reboot": RESTART_MINUTES, "wait-back": RESTART_MINUTES,
                "wait-repair": 600, "wait-storage": 600, "install-lcu": 240, "reboot-lcu": 15,
                "wait-back-lcu": 15}.get(name, 30)  # no step gets the default by mistake
    assert timeout_minutes(OPTIONS, name) == expected


@pytest.mark.parametrize("key", list(DECISIONS), ids=lambda k: f"{k[0].value}-{k[1].value}")
def test_each_row_of_the_position_table_names_known_steps_in_the_runbooks_order(key):
    mode, position = key
    decision = DECISIONS[key]
    assert set(decision.steps) <= set(STEPS)
    order = [s for s in (FULL if mode == Mode.UPGRADE else RESTART) if s in decision.steps]
    adopted = [s for s in decision.steps if s not in order]
    assert adopted in ([], ["gate-adopted"]) and [s for s in decision.steps if s in order] == order
    if decision.action != "run":
        assert decision.steps == ()
    takes = [s for s in decision.steps if STEPS[s].ownership == Ownership.TAKES]
    releases = [s for s in decision.steps if STEPS[s].ownership == Ownership.RELEASES]
    if decision.steps and position != Position.RESYNCING:
        assert releases == ["resume"], "every run of a node ends by giving it back"
    if takes:
        assert decision.steps.index(takes[0]) < decision.steps.index(releases[0])


def test_scripts_run_only_when_their_script_is_given():
    assert not wanted(RunOptions(), "pre-script") and not wanted(RunOptions(), "post-script")
    given = RunOptions(pre_update_script="C:\\Scripts\\pre.ps1")
    assert wanted(given, "pre-script") and not wanted(given, "post-script") and wanted(given, "drain")


def test_the_records_phases_are_the_runbooks_steps_in_order():
    assert PHASES == ("gate", "pre-script", "stop-vms", "drain", "install", "reboot", "wait-back", "install-lcu",
                      "reboot-lcu", "wait-back-lcu", "wait-repair", "resume", "start-vms", "post-script",
                      "wait-storage")
