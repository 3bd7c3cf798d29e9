"""The fleet: clusters selected by tag go in waves (canaries first), at most K at once under a global concurrency
limit of the fleet's own, each one a child flow run that holds its own cluster lock and starts a node only inside
its maintenance window when the node fits. A wave whose failure rate passes the threshold stops the fleet.

With `cluster_deployment` on a Prefect server, each cluster is a run of that deployment (`run_deployment`, linked
as a subflow), taken by whichever worker of the pool is free; without it, a subflow in this process. With
`batch_deployment` (large fleets), a run of that deployment hosts `clusters_per_run` clusters in one process
(flows/batches.py), taken by any worker; a batch run that dies with its worker (Crashed by Prefect's zombie
detection, flows/ghosts.py) leaves its unfinished clusters to a new batch run, which adopts them (their locks'
leases lapse, the records show their runs dead, and each one resumes where it stopped)."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from flows.ghosts import ensure_zombie_detection
from flows.heap import freeze_startup_heap
from flows.locking import fleet_slot
from flows.rolling_upgrade import WINDOW_ENDED, rolling_upgrade
from flows.runtime import embedded
from hciupgrade.fleet import NodeEstimate, Wave, WindowFit, fleet_plan, until_open, window_fit
from hciupgrade.models import Inventory, RunOptions, load_inventory
from tasks.node_steps import prefect_api_failure

FLEET_LIMIT = "hci-upgrade-fleet"
ADOPTIONS = 2  # new batch runs for a batch's unfinished clusters, after its run died: at most this many


def ensure_fleet_limit(slots: int) -> str:
    """The fleet's own limit with K slots (its size follows the inventory's max_parallel)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(FLEET_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=FLEET_LIMIT, limit=slots))
            return FLEET_LIMIT
        if limit.limit != slots:
            client.update_global_concurrency_limit(FLEET_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
    return FLEET_LIMIT


def cluster_options(options: RunOptions, fit: WindowFit) -> RunOptions:
    """The cluster's run options with its window: what is left of it in cluster time, and its node estimate."""
    update: dict[str, Any] = {"node_estimate_seconds": fit.estimate.needed_s, "window_margin_seconds": fit.margin_s,
                              "stage_estimate_seconds": fit.estimate.staging_s or None}
    if fit.remaining_s is not None:
        update["window_seconds"] = max(fit.remaining_s * fit.time_factor, 1.0)
    return options.model_copy(update=update)


def run_cluster(inventory_path: str, inventory: Inventory, name: str, estimate: NodeEstimate, options: RunOptions,
                deployment: str | None, max_windows: int, lease_seconds: float) -> dict[str, Any]:
    """One cluster through as many windows as it takes (at most `max_windows`): wait for the window, take a fleet
    slot, run the cluster's flow; a window that ends continues in the next one."""
    logger = get_run_logger()
    result = _result(name, "not started")
    while result["windows"] < max_windows:
        fit = window_fit(inventory, inventory.cluster(name), estimate)  # now: the window moves on
        wait = until_open(fit).total_seconds()
        if wait > 0:
            logger.info("%s: window %s opens at %s UTC: waiting", name, fit.window, f"{fit.opens:%Y-%m-%d %H:%M}")
            time.sleep(wait)
            continue  # open now: what is left of it is read again
        if not fit.fits:
            logger.info("%s: %.0f min left in the window, a node needs about %.0f with the margin: waiting for the "
                        "next one", name, (fit.remaining_s or 0) / 60,
                        (fit.estimate.needed_s + fit.margin_s) / fit.time_factor / 60)
            time.sleep((fit.remaining_s or 0) + 1)
            continue
        result["windows"] += 1
        with fleet_slot(FLEET_LIMIT, lease_seconds=lease_seconds):
            state, flow_run_id = _run_child(inventory_path, name, cluster_options(options, fit), deployment)
        result["flow_run"], result["reason"] = str(flow_run_id), state.message
        if state.is_completed() and (state.message or "").startswith(WINDOW_ENDED):
            result["state"] = "window ended"  # the next window continues it
            continue
        result["state"] = "upgraded" if state.is_completed() else "failed"
        break
    return result


def _run_child(inventory_path: str, name: str, options: RunOptions, deployment: str | None) -> tuple[Any, Any]:
    if deployment and not embedded():
        from prefect.deployments import run_deployment

        run = run_deployment(deployment, parameters={
            "inventory": inventory_path, "cluster": name,
            "options": options.model_dump(mode="json", by_alias=True, exclude_none=True)},
            timeout=0, as_subflow=True, tags=[f"cluster:{name.lower()}", "fleet"])
        return wait_for_run(run.id).state, run.id
    state = rolling_upgrade(inventory=inventory_path, cluster=name, options=options, return_state=True)
    return state, state.state_details.flow_run_id


def _fleet_name() -> str:
    from prefect.runtime import flow_run

    chosen = (flow_run.parameters.get("tags") or []) + (flow_run.parameters.get("clusters") or [])
    return "fleet-" + ("-".join(chosen) if chosen else "all")


@flow(name="fleet-upgrade", flow_run_name=_fleet_name, log_prints=True)
def fleet_upgrade(inventory: str, tags: list[str] | None = None, options: RunOptions | None = None,
                  cluster_deployment: str | None = None, max_windows: int = 30,
                  clusters: list[str] | None = None, batch_deployment: str | None = None,
                  clusters_per_run: Annotated[int, Field(ge=1, le=500)] = 25) -> dict[str, Any]:
    """Upgrade the clusters of a fleet inventory selected by `tags` (key=value) and `clusters` (names) in waves.
    `cluster_deployment` (server mode): the rolling-upgrade deployment each cluster runs as, e.g.
    "rolling-upgrade/rolling-upgrade-fleet". `batch_deployment` (server mode, large fleets; it wins over
    `cluster_deployment`): the fleet-batch deployment whose runs host `clusters_per_run` clusters each, e.g.
    "fleet-batch/fleet-batch"."""
    freeze_startup_heap()
    logger = get_run_logger()
    fleet = load_inventory(inventory)
    options = options or RunOptions()
    waves, fits = fleet_plan(fleet, tags, names=clusters, staged=options.stages)
    policy = fleet.waves
    ensure_fleet_limit(policy.max_parallel)
    batches = _Batches(batch_deployment, clusters_per_run) if batch_deployment and not embedded() else None
    if batches:
        ensure_zombie_detection()
    logger.info("%d clusters in %d waves, at most %d at once: %s", len(fits), len(waves), policy.max_parallel,
                "; ".join(f"{w.name}: {', '.join(w.clusters)}" for w in waves))
    results: dict[str, dict[str, Any]] = {}
    stopped: str | None = None
    for wave in waves:
        logger.info("%s: starting %s", wave.name, ", ".join(wave.clusters))
        results.update(_run_wave(inventory, fleet, wave, {n: fits[n].estimate for n in wave.clusters}, options,
                                 cluster_deployment, max_windows, policy.max_parallel, batches))
        finished = [r for r in results.values() if r["state"] in ("upgraded", "failed")]
        failed = [r for r in finished if r["state"] == "failed"]
        rate = len(failed) / len(finished) if finished else 0.0
        if rate > policy.max_failure_rate:
            stopped = (f"{wave.name} stopped the fleet: {len(failed)} of {len(finished)} finished clusters failed "
                       f"({rate:.0%} > max_failure_rate {policy.max_failure_rate:.0%}): "
                       + "; ".join(f"{r['cluster']}: {r['reason']}" for r in failed))
            logger.error("%s", stopped)
            break
    left = [c for w in waves for c in w.clusters if c not in results]
    summary = {"waves": [{"wave": w.name, "clusters": w.clusters} for w in waves], "clusters": list(results.values()),
               "stopped": stopped, "not_started": left}
    _publish(summary)
    return summary


@dataclass(frozen=True)
class _Batches:
    deployment: str
    size: int


def _run_wave(inventory_path: str, fleet: Inventory, wave: Wave, estimates: dict[str, NodeEstimate],
              options: RunOptions, deployment: str | None, max_windows: int, slots: int,
              batches: _Batches | None = None) -> dict[str, dict[str, Any]]:
    """The wave's clusters side by side, or its batches of clusters (each a run of the batch deployment)."""
    if batches is None:
        return run_clusters(inventory_path, fleet, wave.clusters, estimates, options, deployment, max_windows,
                            workers=slots)
    groups = [wave.clusters[i:i + batches.size] for i in range(0, len(wave.clusters), batches.size)]
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, run_batch, inventory_path, group,
                               {n: estimates[n] for n in group}, options, batches.deployment, max_windows)
                   for group in groups]
        for future in futures:
            results.update(future.result())
    return results


def run_clusters(inventory_path: str, fleet: Inventory, names: list[str], estimates: dict[str, NodeEstimate],
                 options: RunOptions, deployment: str | None, max_windows: int, *, workers: int
                 ) -> dict[str, dict[str, Any]]:
    """Clusters side by side (threads carrying the flow's context, so each child run is linked to this one); the
    fleet limit holds them to K, in this process and in every other one."""
    lease = options.lock_lease_seconds
    with ThreadPoolExecutor(max_workers=max(1, min(len(names), workers))) as pool:
        futures = {name: pool.submit(contextvars.copy_context().run, run_cluster, inventory_path, fleet, name,
                                     estimates[name], options, deployment, max_windows, lease)
                   for name in names}
        results = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as e:  # noqa: BLE001 - one cluster's error is that cluster's failure
                results[name] = _result(name, "failed", reason=f"{type(e).__name__}: {e}")
    return results


def run_batch(inventory_path: str, names: list[str], estimates: dict[str, NodeEstimate], options: RunOptions,
              deployment: str, max_windows: int) -> dict[str, dict[str, Any]]:
    """A batch of clusters as one run of the batch deployment, taken by any worker. When that run dies (Crashed:
    its worker or machine died) without a result for some of its clusters, a new batch run adopts them, at most
    ADOPTIONS times; never after a batch an operator cancelled. Each cluster's result is read from the batch run's
    children (its clusters' runs) in Prefect."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    results: dict[str, dict[str, Any]] = {}
    left, runs = list(names), []
    for _ in range(1 + ADOPTIONS):
        run = run_deployment(deployment, parameters={
            "inventory": inventory_path, "clusters": left, "max_windows": max_windows,
            "options": options.model_dump(mode="json", by_alias=True, exclude_none=True),
            "estimates": {n: asdict(estimates[n]) for n in left}},
            timeout=0, as_subflow=True, tags=["fleet", "fleet-batch"])
        run = wait_for_run(run.id)
        runs.append(f"{run.name} ({run.state.name if run.state else 'unknown'})")
        results.update(batch_results(run.id, left))
        left = [n for n in left if n not in results]
        if not left:
            break
        if run.state is None or not run.state.is_crashed():
            break  # adopted only from a batch that died: one that failed or was cancelled would be again
        logger.warning("batch run %s ended %s with %d of its clusters unfinished (%s): a new batch run adopts them",
                       run.name, run.state.name if run.state else "in an unknown state", len(left), ", ".join(left))
    for name in left:
        results[name] = _result(name, "failed", reason=f"no result from its batch runs: {'; '.join(runs)}")
    return results


def wait_for_run(flow_run_id: Any, poll_seconds: float = 10) -> Any:
    """The flow run once it ended. A batch runs for hours, and a server that answers late or not at all for a
    while (it restarts, it is busy with a large fleet) must not end the fleet's wait: such a failure is logged and
    the next poll tries again."""
    logger = get_run_logger()
    while True:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
        except Exception as e:  # noqa: BLE001 - only the API's own failures are waited out
            if not prefect_api_failure(e):
                raise
            logger.warning("waiting for flow run %s: Prefect's API failed (%s); asking again in %.0f s",
                           flow_run_id, e, poll_seconds)
        time.sleep(poll_seconds)


def batch_results(batch_run_id: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each cluster's result from the batch run's children (the clusters' runs, one per window): the last one
    decides. A cluster whose last run did not end (its process died with the batch) has no result yet."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    children: list[Any] = []
    for attempt in range(10):
        try:
            with get_client(sync_client=True) as client:
                while True:  # a page at a time: a batch of hundreds of clusters has more children than a page
                    page = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[batch_run_id])),
                        sort=FlowRunSort.START_TIME_ASC, limit=200, offset=len(children))
                    children += page
                    if len(page) < 200:
                        break
            break
        except Exception as e:  # noqa: BLE001 - the API's own failures are waited out a while
            if not prefect_api_failure(e) or attempt == 9:
                raise
            time.sleep(10)
    runs: dict[str, list[Any]] = {}
    for child in children:
        runs.setdefault(str(child.parameters.get("cluster")), []).append(child)
    results = {}
    for name in names:
        mine = runs.get(name, [])
        last = mine[-1].state if mine else None
        if last is None or not last.is_final() or last.is_crashed():
            continue
        message = last.message or ""
        state = ("window ended" if message.startswith(WINDOW_ENDED) else "upgraded") if last.is_completed() \
            else "failed"
        results[name] = _result(name, state, windows=len(mine), flow_run=str(mine[-1].id), reason=message or None)
    return results


def _result(name: str, state: str, *, windows: int = 0, flow_run: str | None = None,
            reason: str | None = None) -> dict[str, Any]:
    return {"cluster": name, "state": state, "windows": windows, "flow_run": flow_run, "reason": reason}


def _publish(summary: dict[str, Any]) -> None:
    rows = [{"cluster": r["cluster"], "state": r["state"], "windows": r["windows"], "reason": r["reason"] or ""}
            for r in summary["clusters"]]
    if rows:
        create_table_artifact(rows, key="fleet-upgrade-clusters", description="Each cluster's result in the fleet")
    lines = [f"# Fleet upgrade: {sum(r['state'] == 'upgraded' for r in rows)} of {len(rows)} clusters upgraded",
             f"At {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.", ""]
    if summary["stopped"]:
        lines += [f"**Stopped:** {summary['stopped']}", ""]
    if summary["not_started"]:
        lines += [f"**Not started:** {', '.join(summary['not_started'])}", ""]
    create_markdown_artifact("\n".join(lines), key="fleet-upgrade-summary")
