"""The per-cluster lock: a Prefect global concurrency limit with one slot, taken strictly so a missing limit is
an error and never a silent no-lock, inside a host lock (flock) so runs on one machine exclude each other in
every mode.

Embedded mode (no PREFECT_API_URL): every process starts its own temporary server on the same SQLite database,
and leases live in that server's memory (PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE defaults to memory). A holder
killed with SIGKILL therefore leaves `active_slots` at 1 with no lease left to expire: the slot would never come
back. Holding the host lock proves no live process on this machine holds the cluster, and in embedded mode no
other machine can, so a slot still counted then is stale and is reclaimed.

Server mode: the slot of a killed holder comes back when its lease expires, lease_seconds after its last renewal
plus up to 15 s for the server's repossessor loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_client
from prefect.concurrency.sync import concurrency
from prefect.settings import get_current_settings

from hciupgrade.hostlock import host_lock

log = logging.getLogger(__name__)


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

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def limit_name(cluster: str) -> str:
    return f"hci-upgrade-cluster-{cluster.lower()}"


def embedded() -> bool:
    return get_current_settings().api.url is None


def ensure_limit(cluster: str, *, reclaim_stale: bool) -> str:
    """Create the cluster's one-slot limit if it does not exist; with `reclaim_stale`, zero a leaked slot."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    name = limit_name(cluster)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
            return name
        if reclaim_stale and limit.active_slots:
            log.warning("reclaiming %s slot(s) of %s left by a run that died on this machine", limit.active_slots,
                        name)
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
    return name


@contextmanager
def cluster_lock(cluster: str, *, lease_seconds: float, timeout_seconds: float = 6 * 3600) -> Iterator[None]:
    with host_lock(cluster, timeout=timeout_seconds):
        name = ensure_limit(cluster, reclaim_stale=embedded())
        with concurrency(name, occupy=1, strict=True, lease_duration=lease_seconds,
                         timeout_seconds=timeout_seconds, raise_on_lease_renewal_failure=False):
            yield


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
        return f"{prefix}-{cluster}"

    return name


def narrate_to_run_log(recorder: Any) -> None:
    """Every record event worth a line goes to the flow run's log in Prefect (the CLI's console stays quiet:
    its console handler shows warnings only)."""
    from prefect import get_run_logger

    from hciupgrade.narration import describe

    logger = get_run_logger()

    def listener(event: dict[str, Any]) -> None:
        line = describe(event)
        if line is not None:
            logger.log(*line)

    recorder.listeners.append(listener)
