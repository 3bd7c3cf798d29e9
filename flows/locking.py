"""The per-cluster lock: a Prefect global concurrency limit with one slot (across processes and machines that
share a Prefect server), taken strictly so a missing limit is an error and never a silent no-lock, plus a host
lock (flock) so runs on one machine exclude each other even in embedded mode, where each process has its own
temporary server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_client
from prefect.concurrency.sync import concurrency

from hciupgrade.hostlock import host_lock


def limit_name(cluster: str) -> str:
    return f"hci-upgrade-cluster-{cluster.lower()}"


def ensure_limit(cluster: str) -> str:
    """Create the cluster's one-slot limit if it does not exist (never touch one that does)."""
    name = limit_name(cluster)
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
    return name


@contextmanager
def cluster_lock(cluster: str, *, lease_seconds: float, timeout_seconds: float = 6 * 3600) -> Iterator[None]:
    with host_lock(cluster, timeout=timeout_seconds):
        name = ensure_limit(cluster)
        with concurrency(name, occupy=1, strict=True, lease_duration=lease_seconds,
                         timeout_seconds=timeout_seconds, raise_on_lease_renewal_failure=False):
            yield
