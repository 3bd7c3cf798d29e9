"""A node's upgrade step as a Prefect task: the Prefect wrapping (retries on a transient remoting failure, a task
run per step and node in the UI) around hciupgrade.upgrade.rolling.perform; and the run's other phases (reconcile,
preflight, plan, a node's recovery) as task runs of their own. The live connections of a run are looked up in
`RUNS`, which the flow fills for its duration, so the tasks' inputs stay plain names.

`TaskChain` runs each task run after the previous one (`wait_for` its state), so Prefect's run graph draws the
upgrade as one chain, node after node; each task run is named after its step, node and attempt. Task runs carry
no tags (the flow run carries the cluster's): Prefect asks the server for a tagged task run's tag concurrency slots
and leaves a lease behind even when no such limit exists, an API call and a lease per step for a filter the names
already give.

Prefect's API is for the record, never on the cluster's critical path: when it fails around a task run (its server
restarting, its database down), the step's own outcome decides (it is kept apart from Prefect's state), and a step
whose task run could not even start runs directly, with a warning. A run is not stopped halfway through a node
because its bookkeeping could not be written."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
from prefect import allow_failure, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from hciupgrade.remote import NodeUnreachable, RemotingError
from hciupgrade.upgrade.rolling import RollingUpgrade, perform
from hciupgrade.upgrade.runbook import timeout_minutes

RUNS: dict[str, RollingUpgrade] = {}
PHASES: dict[str, Callable[[], Any]] = {}
OUTCOMES: dict[str, dict[str, Any]] = {}  # a task run's key -> its body's own outcome ("result" or "error")
log = logging.getLogger("hci_upgrade.tasks")


def prefect_api_failure(error: BaseException) -> bool:
    """Whether an exception is Prefect's API failing (a server that does not answer, or answers 5xx), not a step's:
    the error itself or what it was raised from (a task's concurrency slots that could not be asked for, say)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, httpx.HTTPStatusError):
            return seen.response.status_code >= 500
        if isinstance(seen, httpx.TransportError | ConnectionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def kept(key: str, body: Callable[[], Any]) -> Any:
    """Run a task's body and keep its outcome apart from Prefect's state."""
    try:
        result = body()
    except BaseException as e:
        OUTCOMES[key] = {"error": e}
        raise
    OUTCOMES[key] = {"result": result}
    return result


def transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry only what may pass: a node that did not answer, a remoting hiccup. A refusal is final."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, NodeUnreachable | RemotingError)


@task(name="node-step", task_run_name="{step}-{node}", cache_policy=NO_CACHE, retry_condition_fn=transient,
      retries=3, retry_delay_seconds=10)
def node_step(run_id: str, step: str, node: str) -> Any:
    engine = RUNS[run_id]
    return kept(f"{run_id}/{step}/{node}", lambda: perform(engine, step, node))


@task(name="phase", task_run_name="{name}", cache_policy=NO_CACHE)
def phase(key: str, name: str) -> Any:
    return kept(key, PHASES[key])


class TaskChain:
    """The engine's step and phase runners for a flow: each a task run submitted after the previous one."""

    def __init__(self, run_id: str, cluster: str, time_factor: float, *, engine: RollingUpgrade | None = None
                 ) -> None:
        """`engine`: the rolling engine whose node steps run (`step`); without one, only `phase` (the post-OS
        steps)."""
        self.run_id, self.engine, self.cluster, self.time_factor = run_id, engine, cluster, time_factor
        self.last: State | None = None

    def _submit(self, runner: Any, key: str, body: Callable[[], Any], *args: Any) -> Any:
        # run in this thread (no pool hand-off); the previous task run's state in wait_for draws the edge, and
        # allow_failure lets a recovery (or the next attempt) follow a failed step
        OUTCOMES.pop(key, None)
        try:
            state = runner(*args, wait_for=[allow_failure(self.last)] if self.last is not None else None,
                           return_state=True)
        except BaseException as e:  # Prefect's slot service raises some of its API failures as BaseException
            if not prefect_api_failure(e):
                raise
            state = None
            log.warning("Prefect's API failed around %s (%s): the step's own outcome decides", key, e)
        outcome = OUTCOMES.pop(key, None)  # the body's last attempt, whatever Prefect could record of it
        if state is not None:
            self.last = state
            if outcome is None:
                return state.result()
        if outcome is None:  # its task run never started: the step runs without one
            log.warning("%s runs without a task run: Prefect's API does not answer", key)
            return body()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def step(self, name: str, node: str) -> Any:
        assert self.engine is not None, "a node step needs the rolling engine"
        options = self.engine.options
        attempt = self.engine.attempts.get(node, 1)
        # a backstop above the step's own timeout: the step's own message is the one an operator should read
        timeout = timeout_minutes(options, name) * 60 * 1.5 / self.time_factor + 120
        if threading.current_thread() is not threading.main_thread():
            timeout = None  # a fleet's cluster runs in a thread, where Prefect cannot interrupt a task (it warns)
        runner = node_step.with_options(
            task_run_name=f"{name}-{node}" + (f"-attempt-{attempt}" if attempt > 1 else ""),
            timeout_seconds=timeout,
            retries=options.task_retries, retry_delay_seconds=options.retry_delay_seconds)
        run_id, engine = self.run_id, self.engine
        return self._submit(runner, f"{run_id}/{name}/{node}", lambda: perform(engine, name, node), run_id,
                            name, node)

    def phase(self, name: str, what: Callable[[], Any]) -> Any:
        key = f"{self.run_id}/{name}"
        PHASES[key] = what
        try:
            return self._submit(phase, key, what, key, name)
        finally:
            PHASES.pop(key, None)
