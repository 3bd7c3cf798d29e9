"""Every node step in one place: its name (the phase in the records), the method of `Steps` that does it, how the
CLI labels it, which run option bounds it (the task run's backstop), whether it changes the node and what it does
to our ownership of it, and whether its start is worth a line in the run's log. The step sequences of the
position table (hciupgrade/upgrade/positions.py), the records' phases, the narration's quiet steps, the CLI's labels and
the task timeouts all derive from here, so a new step is one row."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Ownership(StrEnum):
    """What a step does to the run's hold on the node."""

    NONE = "none"
    TAKES = "takes"  # the node is paused under this run's mark by this step
    RELEASES = "releases"  # the node leaves this run's hands at the end of this step


@dataclass(frozen=True)
class StepSpec:
    name: str
    method: str  # Steps.<method>(node)
    label: str  # the CLI's column
    timeout_option: str | None  # a RunOptions field in minutes; None: DEFAULT_TIMEOUT_MINUTES
    timeout_factor: float = 1.0
    reads: bool = False  # changes nothing on the cluster
    ownership: Ownership = Ownership.NONE
    quiet: bool = False  # its start says nothing an operator acts on
    keeps_result: bool = True  # its return value is recorded with the phase (an exit code, a build)
    option: str | None = None  # a RunOptions field that must be set for the step to run (the scripts)


DEFAULT_TIMEOUT_MINUTES = 30.0

GATE, GATE_ADOPTED, PRE_SCRIPT, DRAIN, INSTALL, REBOOT = "gate", "gate-adopted", "pre-script", "drain", "install", \
    "reboot"
WAIT_BACK, WAIT_REPAIR, RESUME, POST_SCRIPT, WAIT_STORAGE = "wait-back", "wait-repair", "resume", "post-script", \
    "wait-storage"
STOP_VMS, START_VMS = "stop-vms", "start-vms"  # WorkloadPolicy shut-down
INSTALL_LCU, REBOOT_LCU, WAIT_BACK_LCU = "install-lcu", "reboot-lcu", "wait-back-lcu"  # the LCU in the same drain

STEPS: dict[str, StepSpec] = {s.name: s for s in (
    StepSpec(GATE, "gate", "gate", "gate_timeout_minutes", reads=True, keeps_result=False),
    StepSpec(GATE_ADOPTED, "gate_adopted", GATE_ADOPTED, None, reads=True, quiet=True),
    StepSpec(PRE_SCRIPT, "pre_script", PRE_SCRIPT, None, option="pre_update_script"),
    StepSpec(STOP_VMS, "stop_vms", "VMs off", None, option="shuts_down_vms"),
    StepSpec(DRAIN, "drain", "drain", "drain_timeout_minutes", timeout_factor=2, ownership=Ownership.TAKES,
             keeps_result=False),
    StepSpec(INSTALL, "install", "install", "install_timeout_minutes"),
    StepSpec(REBOOT, "reboot", "reboot", "restart_timeout_minutes"),
    StepSpec(WAIT_BACK, "wait_back", "back", "restart_timeout_minutes", reads=True),
    StepSpec(INSTALL_LCU, "install_lcu", "LCU", "install_timeout_minutes", option="lcu_in_drain"),
    StepSpec(REBOOT_LCU, "reboot_lcu", "LCU reboot", "reboot_timeout_minutes", option="lcu_in_drain",
             keeps_result=False),
    StepSpec(WAIT_BACK_LCU, "wait_back_lcu", "LCU back", "reboot_timeout_minutes", reads=True,
             option="lcu_in_drain"),
    StepSpec(WAIT_REPAIR, "wait_repair", "repair?", "repair_timeout_minutes", reads=True, quiet=True,
             keeps_result=False),
    StepSpec(RESUME, "resume", "resume", None, ownership=Ownership.RELEASES, keeps_result=False),
    StepSpec(START_VMS, "start_vms", "VMs on", None, option="shuts_down_vms"),
    StepSpec(POST_SCRIPT, "post_script", POST_SCRIPT, None, option="post_update_script"),
    StepSpec(WAIT_STORAGE, "wait_settled", "resync", "repair_timeout_minutes", reads=True, keeps_result=False),
)}

# the sequences of the position table, in the order a node goes through them
AFTER_REBOOT = (WAIT_BACK, INSTALL_LCU, REBOOT_LCU, WAIT_BACK_LCU, WAIT_REPAIR, RESUME, START_VMS, POST_SCRIPT,
                WAIT_STORAGE)
FULL = (GATE, PRE_SCRIPT, STOP_VMS, DRAIN, INSTALL, REBOOT, *AFTER_REBOOT)
RESTART = (GATE, DRAIN, REBOOT, *AFTER_REBOOT)
CONTINUE_UPGRADE = (GATE_ADOPTED, STOP_VMS, DRAIN, INSTALL, REBOOT, *AFTER_REBOOT)
CONTINUE_RESTART = (GATE_ADOPTED, DRAIN, REBOOT, *AFTER_REBOOT)

PHASES = tuple(name for name in STEPS if name != GATE_ADOPTED)  # the phases a node's summary shows, in order
READS = frozenset(name for name, spec in STEPS.items() if spec.reads)
QUIET = frozenset(name for name, spec in STEPS.items() if spec.quiet)
LABELS = {name: spec.label for name, spec in STEPS.items() if spec.label != name}


def timeout_minutes(options: Any, step: str) -> float:
    """The cluster minutes a step may take (its own wait's timeout), for the task run's backstop."""
    spec = STEPS.get(step)
    if spec is None or spec.timeout_option is None:
        return DEFAULT_TIMEOUT_MINUTES
    return float(getattr(options, spec.timeout_option)) * spec.timeout_factor


def wanted(options: Any, step: str) -> bool:
    """Whether the run options ask for the step (a script step runs only with its script, the VMs' shut-down
    and start only under WorkloadPolicy shut-down)."""
    spec = STEPS[step]
    return spec.option is None or getattr(options, spec.option) is not None
