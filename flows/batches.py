"""A batch of a fleet's clusters in one flow run: for fleets of hundreds of clusters, one worker process hosts many
clusters (each a subflow on a thread, as in the fleet's own process) instead of one process of about 240 MB a
cluster. The fleet (flows/fleet.py) starts one run of the batch deployment per batch; any worker of the pool takes
it. K (the fleet's limit) and each cluster's lock are server-side limits, so they hold across batches and
workers. A batch whose worker dies is set Crashed by the zombie automation (flows/ghosts.py), and the fleet gives
its unfinished clusters to a new batch run."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.settings import get_current_settings

from flows.fleet import run_clusters
from flows.ghosts import HEARTBEAT_SECONDS
from flows.heap import freeze_startup_heap
from hciupgrade.fleet import NodeEstimate, fleet_plan
from hciupgrade.models import RunOptions, load_inventory


def _batch_name() -> str:
    from prefect.runtime import flow_run

    names = flow_run.parameters.get("clusters") or []
    return f"batch-{names[0]}-{len(names)}" if names else "batch-empty"


@flow(name="fleet-batch", flow_run_name=_batch_name, log_prints=True)
def fleet_batch(inventory: str, clusters: list[str], options: RunOptions | None = None, max_windows: int = 30,
                estimates: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The `clusters` of a fleet inventory side by side in this process, each in its window and under a fleet
    slot, as the fleet would run them itself. `estimates`: each cluster's node estimate from the fleet's plan
    (without them the batch reads the records again)."""
    freeze_startup_heap()
    logger = get_run_logger()
    beat = get_current_settings().flows.heartbeat_frequency
    if beat is None or beat > HEARTBEAT_SECONDS:
        logger.warning("this run beats every %s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY): should its worker die, the fleet "
                       "learns it only when the zombie automation's %d s pass without a beat; the batch deployment "
                       "sets %d", f"{beat} s" if beat else "never", 3 * HEARTBEAT_SECONDS, HEARTBEAT_SECONDS)
    fleet = load_inventory(inventory)
    missing = sorted({n.lower() for n in clusters} - {c.name.lower() for c in fleet.clusters})
    if missing:
        raise ValueError(f"clusters: {', '.join(missing)} not in {inventory}; name clusters of that inventory")
    options = options or RunOptions()
    if estimates is None or set(clusters) - set(estimates):
        _, fits = fleet_plan(fleet, None, names=clusters, staged=options.stages)
        guesses = {n: fits[n].estimate for n in clusters}
    else:
        guesses = {n: NodeEstimate(**estimates[n]) for n in clusters}
    logger.info("batch of %d clusters: %s", len(clusters), ", ".join(clusters))
    results = run_clusters(inventory, fleet, clusters, guesses, options, None, max_windows, workers=len(clusters))
    return {"clusters": list(results.values())}
