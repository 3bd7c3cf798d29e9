"""The rolling OS upgrade of one cluster as a Prefect flow. The loop itself is
hciupgrade.upgrade.rolling.RollingUpgrade; this flow hands it its Prefect parts: each step as a task run with
retries, the cluster lock (a global concurrency limit plus a host lock), a progress artifact, and table and
markdown artifacts at the end."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any
from uuid import UUID

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.states import Completed, Failed
from pydantic.json_schema import SkipJsonSchema

from flows.ghosts import bury_ghosts
from flows.heap import freeze_startup_heap
from flows.locking import cluster_lock
from flows.runtime import announce_stalls, connect, narrate_to_run_log, run_name, tag_this_run, ui_only
from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import ClusterClient
from hciupgrade.models import ClusterInventory, RunOptions, RunOutcome, load_inventory
from hciupgrade.records import PHASES, RunRecorder, cau_summary, new_run_id, node_summary
from hciupgrade.upgrade.rolling import RollingUpgrade
from tasks.node_steps import RUNS, TaskChain


class UpgradeFailed(RuntimeError):
    pass


# run id -> (its outcome, its flow run id): what the CLI reports when Prefect's API failed at the run's very end
FINISHED: dict[str, tuple[RunOutcome, str | None]] = {}


def prefect_engine(target: ClusterInventory, options: RunOptions, run_id: str | None = None,
                   ) -> tuple[RollingUpgrade, ClusterClient]:
    """The engine with its Prefect parts: each step a task run with retries, the cluster lock, a progress
    artifact. The caller runs it inside a flow and closes the client."""
    client = connect(target)
    recorder = RunRecorder(run_id or new_run_id(), target.name, time_factor=target.time_factor)
    narrate_to_run_log(recorder)
    announce_stalls(recorder)
    bury_ghosts(recorder)
    key = f"{options.stage}-{target.name.lower()}"
    engine = RollingUpgrade.build(
        client, options, recorder, target.time_factor,
        lock=partial(cluster_lock, target.name, lease_seconds=options.lock_lease_seconds),
        progress=Progress(create_progress_artifact(0.0, key=key, description=f"Rolling upgrade of {target.name}")),
    )
    chain = TaskChain(engine.recorder.run_id, target.name, target.time_factor, engine=engine)
    engine.run_step, engine.run_phase = chain.step, chain.phase
    return engine, client


class Progress:
    """The run's progress artifact, updated on a thread of its own: an update is an API call (10-20 ms a node, on
    the run's critical path otherwise). One thread keeps the updates in order; `close` waits for the last."""

    def __init__(self, artifact_id: UUID) -> None:
        self.artifact_id = artifact_id
        self._updates = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hci-progress")
        self._sent: list[Future[Any]] = []

    def __call__(self, fraction: float) -> None:
        self._sent.append(self._updates.submit(update_progress_artifact, self.artifact_id, 100.0 * fraction))

    def close(self) -> None:
        self._updates.shutdown(wait=True)
        for failed in {str(f.exception()) for f in self._sent if f.exception() is not None}:
            get_run_logger().warning("the progress artifact could not be updated: %s", failed)


def run_engine(engine: RollingUpgrade, client: ClusterClient, *, dry_run: bool = False) -> RunOutcome:
    RUNS[engine.recorder.run_id] = engine
    try:
        outcome, _ = engine.run(dry_run=dry_run)
    except BaseException:  # cancelled: its summary still replaces the previous run's in the UI
        if engine.cancelled is not None:
            publish_if_possible(engine.recorder, engine.cancelled, engine.options.stage)
        raise
    finally:
        RUNS.pop(engine.recorder.run_id, None)
        # the progress's last update before the artifacts: writes to the API one at a time (written concurrently,
        # a temporary server's SQLite answered the next run's lock seconds late in every run of a benchmark set)
        if isinstance(engine.progress, Progress):
            engine.progress.close()
        client.close()
    FINISHED[engine.recorder.run_id] = (outcome, engine.recorder.run_attrs.get("flow_run_id"))
    bury_ghosts(engine.recorder)  # a run this one found dead only after watching its heartbeat stop
    publish_if_possible(engine.recorder, outcome, engine.options.stage)
    return outcome


def publish_if_possible(recorder: RunRecorder, outcome: RunOutcome, stage: str) -> None:
    """The artifacts, unless Prefect's API fails (the outcome is the run's either way)."""
    with ui_only("the run's artifacts could not be published"):
        publish(recorder, outcome, stage)


@contextmanager
def alerts_quiet(target: ClusterInventory, options: RunOptions, run_id: str, *, enabled: bool = True
                 ) -> Iterator[None]:
    """With the inventory's azure.quiet_alerts: an alert processing rule on the cluster's resource for the run
    (hciupgrade/azure/alerts.py), until the window's end at the latest. Alerts are a comfort, not a safety: a rule
    that cannot be created or deleted is a warning, never a reason to stop."""
    azure = target.azure
    if not enabled or azure is None or not azure.quiet_alerts:
        yield
        return
    from hciupgrade.azure import alerts
    from hciupgrade.azure.arm import ArmClient, ArmError

    logger = get_run_logger()
    hours = (options.window_seconds or (options.stop_after.total_seconds() if options.stop_after else 86400)) \
        / 3600 / target.time_factor + 1  # wall hours, and one more for the last node
    arm = ArmClient(azure.endpoint, credential=azure.credential.build(), scope=azure.scope)
    try:
        try:
            alerts.quiet(arm, azure, target.name, run_id, hours)
            logger.info("alerts on %s quiet for the run (alert processing rule %s)", target.name,
                        alerts.rule_path(azure, target.name).rsplit("/", 1)[-1])
        except ArmError as e:
            logger.warning("alerts on %s could not be quieted: %s", target.name, e)
        yield
    finally:
        try:
            alerts.unquiet(arm, azure, target.name)
        except ArmError as e:
            logger.warning("the alert processing rule of %s is left (it ends with the window; the next run removes "
                           "it): %s", target.name, e)
        arm.close()


WINDOW_ENDED = "window ended"  # a run's state message begins with it when its window ended before its last node
WINDOW_ENDED_TAG = "window-ended"


@flow(name="rolling-upgrade", flow_run_name=run_name("upgrade"), log_prints=True)
def rolling_upgrade(inventory: str, cluster: str | None = None, options: RunOptions | None = None,
                    run_id: SkipJsonSchema[str | None] = None, dry_run: SkipJsonSchema[bool] = False) -> dict:
    """A rolling upgrade of one cluster. `run_id` and `dry_run` are the CLI's (kept out of the Run form)."""
    freeze_startup_heap()
    options = options or RunOptions()
    target = load_inventory(inventory).cluster(cluster)
    options = options.check_against(target)  # before anything connects
    tag_this_run("hci-upgrade", f"cluster:{target.name}")  # as a deployment's runs are: the UI filters by them
    for warning in target.warnings():
        get_run_logger().warning(warning)
    run_id = run_id or new_run_id()
    with alerts_quiet(target, options, run_id, enabled=not dry_run):
        outcome = run_engine(*prefect_engine(target, options, run_id), dry_run=dry_run)
        if options.retry_once and outcome.retryable and not dry_run:
            outcome = retry_once(target, options, outcome)
    if outcome.window_ended:  # the window's end is not a failure: the next run continues
        get_run_logger().warning("%s", outcome.error)
        tag_this_run(WINDOW_ENDED_TAG)
        # Completed by name, so the UI's default filters (known state names) list it; the message and the tag
        # say the window ended
        return Completed(message=f"{WINDOW_ENDED}: {outcome.error}", data=outcome.model_dump(mode="json"))
    if not outcome.succeeded:
        get_run_logger().error("Upgrade of %s failed: %s", target.name, outcome.error)
        # a state, not an exception: the run's header reads node, step and cause, and no traceback of ours is
        # logged (a parent flow calling this one still gets an exception)
        return Failed(message=outcome.reason, data=outcome.model_dump(mode="json"))
    return outcome.model_dump(mode="json")


def retry_once(target: ClusterInventory, options: RunOptions, failed: RunOutcome) -> RunOutcome:
    """RetryStalledOrFailedRunOnce: after the cool-down, one more run of the engine (a run of its own in the
    records, adopting the nodes the first left under its mark); its outcome is the flow's, its error says it was
    the retry."""
    logger = get_run_logger()
    logger.warning("retrying once in %g min (RetryStalledOrFailedRunOnce), after: %s", options.retry_cooldown_minutes,
                   failed.reason)
    ClusterClock(target.time_factor).sleep(options.retry_cooldown_minutes * 60)
    outcome = run_engine(*prefect_engine(target, options))
    if not outcome.succeeded and outcome.error:
        outcome.error = f"{outcome.error} (the one retry, after: {failed.reason})"
    elif outcome.succeeded:
        logger.warning("the retry succeeded (run %s) after run %s failed: %s", outcome.run_id, failed.run_id,
                       failed.reason)
    return outcome


def node_rows(events: pd.DataFrame, outcome: RunOutcome) -> pd.DataFrame:
    """The per-node table: every node of the run, those it never started too, attempts as whole numbers."""
    has_nodes = "phase" in events and (events["phase"] == "node").any()
    table = node_summary(events, outcome.run_id).round({p: 1 for p in PHASES}) if has_nodes else pd.DataFrame()
    seen = set(table["node"]) if "node" in table else set()
    missing = [{"node": n.node, "build_before": n.build_before, "build_after": n.build_after, "result": n.result,
                "attempts": n.attempts, "error": n.error} for n in outcome.nodes if n.node not in seen]
    table = pd.concat([table, pd.DataFrame(missing)], ignore_index=True) if missing else table
    if "attempts" in table:
        table["attempts"] = pd.to_numeric(table["attempts"]).fillna(0).astype(int)
    return table


def publish(recorder: RunRecorder, outcome: RunOutcome, stage: str = "upgrade") -> None:
    """Table and markdown artifacts for the Prefect UI, built from the run record; keyed by the pass of the OS
    path (upgrade, cumulative-update, restart), titled with how the run ended."""
    key = f"{stage}-{outcome.cluster.lower()}"
    events = recorder.events()
    table = node_rows(events, outcome)
    cau = cau_summary(events, outcome.run_id)
    if not table.empty:
        create_table_artifact(table.astype(object).where(table.notna(), "").astype(str).to_dict(orient="records"),
                              key=f"{key}-nodes",
                              description=f"Per-node result of run {outcome.run_id} (phases in cluster minutes)")
    if not cau.empty:  # Engine cau: CAU's own report beside ours
        create_table_artifact(cau.fillna("").astype(str).to_dict(orient="records"), key=f"{key}-cau-report",
                              description=f"Get-CauReport -Last -Detailed of run {outcome.run_id}, per node")
    create_markdown_artifact(summary_markdown(outcome, stage, cau), key=f"{key}-summary")


def summary_markdown(outcome: RunOutcome, stage: str, cau: pd.DataFrame) -> str:
    """The run's markdown summary: how it ended, each node's builds and result, CAU's report under Engine cau."""
    title = {"upgrade": "Rolling upgrade", "cumulative-update": "Cumulative update", "restart": "Rolling restart"}
    lines = [f"# {title.get(stage, 'Rolling upgrade')} of {outcome.cluster}: {outcome.end}",
             f"Run `{outcome.run_id}`" + (f", target {outcome.target}." if outcome.target else "."), ""]
    if outcome.error:
        lines += [f"**Stopped:** {outcome.error}", ""]
    if outcome.left_paused:
        lines += [f"**Left paused or down by a run of ours:** {', '.join(outcome.left_paused)}", ""]
    lines += ["| node | before | after | result | attempts | storage | error |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n.node} | {n.build_before or ''} | {n.build_after or ''} | {n.result} | {n.attempts} | "
              f"{'not healthy' if n.storage_healthy is False else ''} | {n.error or ''} |" for n in outcome.nodes]
    if not cau.empty:
        lines += ["", "## Cluster-Aware Updating's report", "", "| node | CAU status | updates | CAU error |",
                  "|---|---|---|---|"]
        lines += [f"| {r.node} | {r.cau_status} | {r.updates} | {r.cau_error} |" for r in cau.itertuples()]
    return "\n".join(lines)
