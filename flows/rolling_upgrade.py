"""The rolling OS upgrade of one cluster, node by node. It reads like the runbook:

    for each node, fewest roles first:
        skip it if it already runs the target build
        take the cluster lock
        gate -> drain -> install -> reboot -> wait back -> wait for a running repair -> resume -> wait for storage
        release the lock
    on a failure: bring back the node this run paused, if it can be reached; stop; name the node

The run remembers which nodes it paused and resumes only those (a node paused by someone else is never touched).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.artifacts import update_progress_artifact

from flows.locking import cluster_lock
from hciupgrade.clock import ClusterClock
from hciupgrade.cluster import ClusterClient
from hciupgrade.models import NodeOutcome, RunOptions, RunOutcome, load_inventory
from hciupgrade.psenums import NodeState
from hciupgrade.records import RunRecorder, load_events, new_run_id, node_summary
from hciupgrade.remote import NodeUnreachable, RemoteError
from hciupgrade.steps import Steps
from tasks.node_steps import NODE_STEPS, RUNS, RunContext


class UpgradeFailed(RuntimeError):
    pass


def load_secret(name: str) -> str:
    from prefect.blocks.system import Secret

    return str(Secret.load(name).get())


def plan_order(client: ClusterClient, options: RunOptions) -> list[str]:
    """The explicit order when given; otherwise fewest roles first, as CAU does."""
    names = list(client.sessions)
    if options.node_order:
        unknown = [n for n in options.node_order if n.lower() not in {m.lower() for m in names}]
        if unknown:
            raise ValueError(f"options.node_order: {unknown[0]!r} is not a node of {client.name} "
                             f"({', '.join(names)})")
        ordered = [client.inventory.node(n).name for n in options.node_order]
        return ordered + [n for n in names if n not in ordered]
    roles = client.roles_per_node()
    return sorted(names, key=lambda n: (roles.get(n, 0), names.index(n)))


def recover(ctx: RunContext, client: ClusterClient, node: str) -> bool:
    """After a failed step: resume the node if this run paused it and it answers. True if it is back in service."""
    if node not in ctx.paused_by_us:
        return True
    try:
        info = client.node_info(node)
        if info.state == NodeState.Paused and client.reachable(node):
            with ctx.recorder.phase(node, "recover"):
                ctx.steps.resume(node)
            ctx.paused_by_us.discard(node)
            return True
    except RemoteError:
        pass
    return False


@flow(name="rolling-upgrade", flow_run_name="upgrade-{cluster}", log_prints=True)
def rolling_upgrade(inventory: str, cluster: str | None = None, options: RunOptions | None = None,
                    run_id: str | None = None) -> dict:
    options = options or RunOptions()
    log = get_run_logger()
    target = load_inventory(inventory).cluster(cluster)
    client = ClusterClient(target, target.credential.resolve(secret_block=load_secret))
    recorder = RunRecorder(run_id or new_run_id(), target.name, time_factor=target.time_factor)
    ctx = RunContext(Steps(client, options, ClusterClock(target.time_factor)), recorder)
    RUNS[recorder.run_id] = ctx
    steps = [t.with_options(retries=options.task_retries, retry_delay_seconds=options.retry_delay_seconds)
             for t in NODE_STEPS]
    outcomes: dict[str, NodeOutcome] = {}
    failure: str | None = None
    recorder.emit(None, "run", "running", options=options.model_dump(mode="json"))
    try:
        order = plan_order(client, options)
        outcomes = {n: NodeOutcome(node=n) for n in order}
        recorder.emit(None, "plan", "succeeded", order=order)
        log.info("Upgrading %s: order %s", target.name, ", ".join(order))
        progress = create_progress_artifact(0.0, key=f"upgrade-{target.name.lower()}",
                                            description=f"Rolling upgrade of {target.name}")
        for index, node in enumerate(order):
            outcome = outcomes[node]
            try:
                outcome.build_before = client.os_build(node)
            except NodeUnreachable as e:
                outcome.result, outcome.error = "failed", f"not reachable before its upgrade: {e}"
                failure = f"{node}: {outcome.error}"
                recorder.emit(node, "node", "failed", result="failed", error=outcome.error)
                break
            if options.build_reached(outcome.build_before):
                outcome.result, outcome.build_after = "skipped", outcome.build_before
                recorder.emit(node, "node", "skipped", result="skipped", build_before=outcome.build_before,
                              build_after=outcome.build_before)
                update_progress_artifact(progress, 100.0 * (index + 1) / len(order))
                continue
            recorder.emit(node, "node", "running", build_before=outcome.build_before)
            try:
                with cluster_lock(target.name, lease_seconds=options.lock_lease_seconds):
                    for step in steps:
                        step(recorder.run_id, node)
                outcome.build_after = client.os_build(node)
                outcome.result = "upgraded"
                recorder.emit(node, "node", "succeeded", result="upgraded", build_before=outcome.build_before,
                              build_after=outcome.build_after)
            except Exception as e:
                back = recover(ctx, client, node)
                outcome.result, outcome.left_paused = "failed", not back
                outcome.error = str(e) + ("" if back else f" ({node} is left paused or down: see to it by hand)")
                failure = outcome.error if outcome.error.startswith(node) else f"{node}: {outcome.error}"
                recorder.emit(node, "node", "failed", result="failed", error=outcome.error,
                              build_before=outcome.build_before, left_paused=not back)
                log.error("Stopping the run: %s", failure)
                break
            update_progress_artifact(progress, 100.0 * (index + 1) / len(order))
    except RemoteError as e:
        failure = str(e)
    finally:
        RUNS.pop(recorder.run_id, None)
        client.close()
    result = RunOutcome(run_id=recorder.run_id, cluster=target.name, succeeded=failure is None,
                        nodes=list(outcomes.values()), error=failure)
    recorder.emit(None, "run", "succeeded" if result.succeeded else "failed", error=failure,
                  outcome=result.model_dump(mode="json"))
    publish(recorder, result)
    if failure:
        raise UpgradeFailed(failure)
    return result.model_dump(mode="json")


def publish(recorder: RunRecorder, outcome: RunOutcome) -> None:
    """Table and markdown artifacts for the Prefect UI, built from the run record."""
    table = node_summary(load_events([recorder.path]), recorder.run_id).round(1)
    key = f"upgrade-{outcome.cluster.lower()}"
    create_table_artifact(table.fillna("").astype(str).to_dict(orient="records"), key=f"{key}-nodes",
                          description=f"Per-node result of run {outcome.run_id} (phases in cluster minutes)")
    lines = [f"# Rolling upgrade of {outcome.cluster}: {'succeeded' if outcome.succeeded else 'FAILED'}",
             f"Run `{outcome.run_id}`.", ""]
    if outcome.error:
        lines += [f"**Stopped:** {outcome.error}", ""]
    lines += ["| node | before | after | result |", "|---|---|---|---|"]
    lines += [f"| {n.node} | {n.build_before or ''} | {n.build_after or ''} | {n.result} |" for n in outcome.nodes]
    create_markdown_artifact("\n".join(lines), key=f"{key}-summary")
