"""The steps of a node's upgrade as Prefect tasks. Each is the Prefect wrapping (retries on a transient remoting
failure, a record of the phase) around one call into hciupgrade.steps. Tasks take plain names; the live
connections of a run are looked up in `RUNS`, which the flow fills for its duration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from hciupgrade.records import RunRecorder
from hciupgrade.remote import NodeUnreachable, RemotingError
from hciupgrade.steps import Steps


@dataclass
class RunContext:
    steps: Steps
    recorder: RunRecorder
    paused_by_us: set[str] = field(default_factory=set)


RUNS: dict[str, RunContext] = {}


def transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry only what may pass: a node that did not answer, a remoting hiccup. A refusal is final."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, NodeUnreachable | RemotingError)


def step_task(name: str):
    return task(name=name, task_run_name=f"{name}-{{node}}", cache_policy=NO_CACHE, retry_condition_fn=transient,
                retries=3, retry_delay_seconds=10)


def _phase(run_id: str, node: str, phase: str, step: Callable[[RunContext], object]) -> object:
    ctx = RUNS[run_id]
    with ctx.recorder.phase(node, phase) as extra:
        result = step(ctx)
        if result is not None:
            extra["result"] = result
    return result


@step_task("gate")
def gate(run_id: str, node: str) -> None:
    _phase(run_id, node, "gate", lambda ctx: ctx.steps.gate(node) and None)


@step_task("drain")
def drain(run_id: str, node: str) -> None:
    RUNS[run_id].paused_by_us.add(node)  # before the call: an answer lost on the way may hide a pause
    _phase(run_id, node, "drain", lambda ctx: ctx.steps.drain(node) and None)


@step_task("install")
def install(run_id: str, node: str) -> None:
    _phase(run_id, node, "install", lambda ctx: ctx.steps.install(node))


@step_task("reboot")
def reboot(run_id: str, node: str) -> None:
    _phase(run_id, node, "reboot", lambda ctx: ctx.steps.reboot(node))


@step_task("wait-back")
def wait_back(run_id: str, node: str) -> str:
    return str(_phase(run_id, node, "wait-back", lambda ctx: ctx.steps.wait_back(node)))


@step_task("wait-repair")
def wait_repair(run_id: str, node: str) -> None:
    _phase(run_id, node, "wait-repair", lambda ctx: ctx.steps.wait_storage(node, settled=False) and None)


@step_task("resume")
def resume(run_id: str, node: str) -> None:
    _phase(run_id, node, "resume", lambda ctx: ctx.steps.resume(node) and None)
    RUNS[run_id].paused_by_us.discard(node)


@step_task("wait-storage")
def wait_storage(run_id: str, node: str) -> None:
    _phase(run_id, node, "wait-storage", lambda ctx: ctx.steps.wait_storage(node, settled=True) and None)


NODE_STEPS = (gate, drain, install, reboot, wait_back, wait_repair, resume, wait_storage)
