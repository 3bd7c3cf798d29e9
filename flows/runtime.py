"""What every flow shares at run time, apart from the lock (flows/locking.py): connecting to a cluster (one
builder, secrets from the environment or a Prefect Secret block), embedded mode and its temporary server, run
names, the run's story in Prefect's log, and the approval form every irreversible step's input extends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger
from prefect.input import RunInput
from prefect.settings import get_current_settings
from pydantic import Field

from hciupgrade.cluster import ClusterClient
from hciupgrade.hostlock import host_lock
from hciupgrade.models import ClusterInventory


@contextmanager
def ui_only(lost: str | None = None) -> Iterator[None]:
    """Calls to Prefect's API that only the UI's view depends on (tags, state messages, artifacts, events): an API
    that fails costs that view (`lost`, logged as a warning), never the run; any other error is raised."""
    from tasks.node_steps import prefect_api_failure

    try:
        yield
    except Exception as e:
        if not prefect_api_failure(e):
            raise
        if lost:
            get_run_logger().warning("%s: Prefect's API failed (%s)", lost, e)


def load_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return str(Secret.load(name).get())


def connect(target: ClusterInventory) -> ClusterClient:
    """The cluster's client: its credential resolved (an environment variable, or a Prefect Secret block)."""
    return ClusterClient(target, target.credential.resolve(secret_block=load_secret))


class ApprovalForm(RunInput):
    """Who approves and why: every approval form of the Prefect UI starts with these (the step toggles follow)."""

    approver: str = Field(min_length=1, description="your name or account")
    reason: str = Field(min_length=1, description="why: the change ticket or the maintenance window")


def run_page(flow_run_id: object) -> str | None:
    """The flow run's page in the Prefect UI (None when no UI is known, as in embedded mode)."""
    ui = get_current_settings().ui_url
    return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and not embedded() else None


def pause_for_approval(form: Any, timeout_seconds: float, what: str) -> Any:
    """Pause this flow run until someone answers `form` in the Prefect UI; the run's log (and the CLI's console,
    which shows warnings) names what waits and the page to approve it on. Raises on timeout: nothing was done."""
    from prefect.context import get_run_context
    from prefect.flow_runs import pause_flow_run

    run = get_run_context().flow_run
    page = run_page(run.id)
    get_run_logger().warning("%s: approve in the Prefect UI%s (the run waits %.0f min)", what,
                             f", {page}" if page else "", timeout_seconds / 60)
    waiting = f"awaiting approval in {run.name}: {what}" + (f", {page}" if page else "")
    parents = tell_the_parents(run, waiting, page)
    try:
        return pause_flow_run(wait_for_input=form, timeout=int(timeout_seconds), poll_interval=5)
    finally:
        tell_the_parents(run, None, None, parents)


def tell_the_parents(run: Any, message: str | None, page: str | None, parents: list | None = None) -> list:
    """A paused subflow run is two levels down in the UI while its parents show Running: each parent's state
    message says what waits and where (None clears it), and each gets a link artifact to the paused run. Only the
    UI's view: a Prefect API that fails costs the hint, never the run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.states import Running

    with ui_only("could not tell the parent runs what waits"):
        with get_client(sync_client=True) as client:
            if parents is None:
                parents, current = [], run
                while current.parent_task_run_id:
                    current = client.read_flow_run(client.read_task_run(current.parent_task_run_id).flow_run_id)
                    parents.append(current.id)
            for parent in parents:
                client.set_flow_run_state(parent, Running(message=message), force=True)
                if message and page:
                    client.create_artifact(ArtifactCreate(
                        type="markdown", flow_run_id=parent, description="the paused run awaiting an approval",
                        data=f"**Awaiting approval** in [{run.name}]({page}): {message}"))
    return parents or []


def embedded() -> bool:
    return get_current_settings().api.url is None


@contextmanager
def embedded_settings() -> Iterator[None]:
    """In embedded mode, run flows without heartbeats: they feed zombie detection on a server, and the temporary
    server dies with the process, so nothing could act on them; they cost about 1 s at the end of every flow run
    (the heartbeat thread is joined). On a Prefect server they stay on."""
    if not embedded():
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.reaper import start_reaper

    start_reaper()  # the temporary server must not outlive a killed CLI
    start_temporary_server()

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def tag_this_run(*tags: str) -> None:
    """Add tags to the current flow run (the UI filters by them), only those it lacks; task runs stay untagged (a
    tagged task run asks the server for its tags' slots). A Prefect API that fails costs only the tags."""
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context

    run = get_run_context().flow_run
    with ui_only(f"could not tag the run {', '.join(tags)}"), get_client(sync_client=True) as client:
        current = client.read_flow_run(run.id).tags
        if set(tags) - set(current):
            client.update_flow_run(run.id, tags=[*current, *(t for t in tags if t not in current)])


def start_temporary_server() -> None:
    """Start this process's temporary Prefect server now, one process at a time on this machine. Prefect starts
    it lazily with a random port (checked free, then bound by the child: two processes starting together may
    pick the same one) and a 20 s wait counted in sleeps; seven CLIs started at once on a 2-core machine all
    failed so ("Timed out while attempting to connect to ephemeral Prefect API server", benchmarks/
    concurrent_clis.py). Under a machine-wide file lock each start binds its port and migrates the shared
    SQLite database before the next begins, with HCI_UPGRADE_PREFECT_START_SECONDS (180) to do it."""
    from prefect.server.api.server import SubprocessASGIServer

    budget = float(os.environ.get("HCI_UPGRADE_PREFECT_START_SECONDS", "180"))
    server = SubprocessASGIServer()
    if server.running:
        return
    with host_lock("_prefect-start", timeout=budget):  # "_": no cluster name has one, so no cluster's lock
        server.start(timeout=int(budget))


def stage_of(options: Any) -> str:
    """The rolling flow's pass (upgrade, cumulative-update, restart) from its `options` parameter, as given: a
    RunOptions in process, a dict of CAU's names from a deployment."""
    from hciupgrade.models import RunOptions

    try:
        return (options if isinstance(options, RunOptions) else RunOptions.model_validate(options or {})).stage
    except ValueError:
        return "upgrade"


def run_name(prefix: str):  # noqa: ANN201 - a Prefect flow_run_name callable
    """A flow run's name with the cluster's name resolved from the inventory when the `cluster` parameter is left
    out (one cluster in the inventory), so that no run is ever named "upgrade-None"."""

    def name() -> str:
        from prefect.runtime import flow_run

        from hciupgrade.models import InputError, load_inventory

        parameters = flow_run.parameters
        cluster = parameters.get("cluster") or parameters.get("clusters")
        if isinstance(cluster, list):
            cluster = ",".join(cluster)
        if not cluster:
            try:
                clusters = load_inventory(parameters["inventory"]).clusters
                cluster = ",".join(c.name for c in clusters)
            except (InputError, KeyError):
                cluster = "inventory"
        return f"{stage_of(parameters.get('options')) if prefix == 'upgrade' else prefix}-{cluster}"

    return name


def announce_stalls(recorder: Any) -> None:
    """A stalled step (hciupgrade.upgrade.steps.STALL_FACTOR) shows where operators look without reading logs: the
    flow run's state message (still Running) and a Prefect event, `hci-upgrade.step.stalled`, for an automation
    to page someone. A Prefect API that fails costs only the notice."""
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context
    from prefect.events import emit_event
    from prefect.states import Running

    from hciupgrade.records.narration import describe

    flow_run_id = get_run_context().flow_run.id
    stalled: dict[str, str] = {}  # node -> its step told stalled, until that step ends (then the message clears)

    def listener(event: dict[str, Any]) -> None:
        node, phase = str(event.get("node")), event.get("phase")
        if phase == stalled.get(node) and event.get("status") != "running":
            stalled.pop(node)
            with ui_only(), get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Running(), force=True)
            return
        if phase != "stalled":
            return
        stalled[node] = str(event.get("step"))
        _, text = describe(event) or (0, "stalled")
        with ui_only():
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Running(message=text), force=True)
            emit_event(event="hci-upgrade.step.stalled",
                       resource={"prefect.resource.id": f"hci-upgrade.cluster.{event.get('cluster')}",
                                 "hci-upgrade.node": str(event.get("node"))},
                       related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                                 "prefect.resource.role": "flow-run"}],
                       payload={k: event.get(k) for k in ("run_id", "step", "minutes", "why")})

    recorder.listeners.append(listener)


def narrate_to_run_log(recorder: Any) -> None:
    """Every record event worth a line goes to the flow run's log in Prefect (the CLI's console stays quiet:
    its console handler shows warnings only)."""
    from prefect import get_run_logger

    from hciupgrade.records.narration import describe

    logger = get_run_logger()

    def listener(event: dict[str, Any]) -> None:
        line = describe(event)
        if line is not None:
            logger.log(*line)

    recorder.listeners.append(listener)
