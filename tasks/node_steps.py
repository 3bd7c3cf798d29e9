"""A node's upgrade step as a Prefect task: the Prefect wrapping (retries on a transient remoting failure, a task
run per step and node in the UI) around hciupgrade.engine.perform. The live connections of a run are looked up
in `RUNS`, which the flow fills for its duration, so the task's inputs stay plain names."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from hciupgrade.engine import RollingUpgrade, perform
from hciupgrade.remote import NodeUnreachable, RemotingError

RUNS: dict[str, RollingUpgrade] = {}


def transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry only what may pass: a node that did not answer, a remoting hiccup. A refusal is final."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, NodeUnreachable | RemotingError)


@task(name="node-step", task_run_name="{step}-{node}", cache_policy=NO_CACHE, retry_condition_fn=transient,
      retries=3, retry_delay_seconds=10)
def node_step(run_id: str, step: str, node: str) -> Any:
    engine = RUNS[run_id]
    return perform(engine, step, node)
