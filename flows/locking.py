"""The per-cluster lock: a Prefect global concurrency limit with one slot, held under a lease this module keeps
itself, inside a host lock (flock) so runs on one machine exclude each other in every mode.

Why not Prefect's `concurrency()` context manager: its lease renewal runs on a thread the run never hears from, and
with `raise_on_lease_renewal_failure=False` a run whose lease lapsed carries on "without the lock" (a run frozen for
210 s restarted a node another run had returned to service: two nodes out). Here the run can ask at any moment
whether its lease is current (`ClusterLease.check`, called before every change and every poll of a wait): the
lease counts as current only while its last confirmed renewal is younger than the lease less a margin, by the
monotonic, boot and wall clocks (a suspended VM or laptop stops the first, not the others). A lease the server no
longer knows (410), or one not confirmed in time, is lost: the run stops acting on the cluster
(hciupgrade/ownership.py). The fence the run then shows every node is what stops it if it wakes up too late to know.

The lease must outlive a restart of the Prefect server: leases live in the server's lease storage, in memory by
default (a restart forgets them, the slot stays taken and every holder loses its lease). The shipped deployment,
the README's server path and the tests run the server with
PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem.

Waiting: a run waiting for the slot says every minute what holds it (run, machine, process, since when: from the
run records). A slot whose holder is dead by the records (its process gone on this machine, or its heartbeat stale)
is reclaimed with a message: the dead holder's lease released by its id (recorded when it took the lock), or the
slot count reset when no lease is left to release (an embedded server that died with its process, a server that
forgot its leases).

Embedded mode (no PREFECT_API_URL): every process starts its own temporary server on the same SQLite database,
and leases live in that server's memory. A holder killed with SIGKILL therefore leaves `active_slots` at 1 with no
lease left to expire. Holding the host lock proves no live process on this machine holds the cluster, and in
embedded mode no other machine can, so a slot still counted then is stale and is reclaimed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client
from prefect.settings import get_current_settings

from flows.runtime import embedded
from hciupgrade.hostlock import LockTimeout, host_lock
from hciupgrade.ownership import Held, LostOwnership

log = logging.getLogger("hci_upgrade.lock")
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"  # outlives a server restart


def report_seconds() -> float:
    """How often a waiting run says what holds the lock (and reclaims a dead holder's slot): once a minute."""
    return float(os.environ.get("HCI_UPGRADE_LOCK_REPORT_SECONDS", "60"))


def limit_name(cluster: str) -> str:
    return f"hci-upgrade-cluster-{cluster.lower()}"


def ensure_limit(cluster: str, *, reclaim_stale: bool) -> str:
    """Create the cluster's one-slot limit if it does not exist; with `reclaim_stale`, zero a leaked slot."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
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
            _reset_slots(client, name)
    return name


def _reset_slots(client: Any, name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def _clocks() -> tuple[float, float, float]:
    """(monotonic, boot, wall) seconds: a process stopped by SIGSTOP stops none of them; a suspended machine stops
    the monotonic clock on Linux, not the boot clock nor the wall clock."""
    boot = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()
    return time.monotonic(), boot, time.time()


class ClusterLease:
    """One run's hold on the cluster's slot: acquired under a lease, renewed on a thread every quarter of the
    lease, checked by the run before every change."""

    def __init__(self, cluster: str, limit: str, seconds: float, *, poll_cap: float = 10.0) -> None:
        self.cluster, self.limit, self.seconds = cluster, limit, max(60.0, float(seconds))  # the server's least
        self.poll_cap = poll_cap  # the longest wait between two attempts, whatever the server's Retry-After
        self.lease_id: UUID | None = None
        self.lost: str | None = None
        self._confirmed = _clocks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def margin(self) -> float:
        """How much younger than the lease the last confirmation must be: room for the server's repossessor
        (every 15 s) and a new holder's first action, so that a lapsed lease is never used."""
        return max(10.0, 0.2 * self.seconds)

    def age(self) -> float:
        """Seconds since the lease was last confirmed, by the clock that moved most."""
        return max(now - then for now, then in zip(_clocks(), self._confirmed, strict=True))

    def check(self) -> None:
        """Raise LostOwnership unless the lease is current."""
        if self.lost is None and self.age() > self.seconds - self.margin:
            self.lost = (f"the cluster lock's lease was last confirmed {self.age():.0f} s ago (lease "
                         f"{self.seconds:g} s): this run was frozen or cut off from the Prefect server, and another "
                         "run may hold the cluster now")
        if self.lost is not None:
            raise LostOwnership(self.lost)

    def acquire(self, timeout: float, waiting: Callable[[float], None]) -> None:
        """Take the slot, waiting up to `timeout` s; `waiting(seconds waited)` is called every report_seconds()."""
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
        from prefect.runtime import flow_run

        holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run.id)) if flow_run.id else None
        started = time.monotonic()
        next_report = started + report_seconds()
        with get_client(sync_client=True) as client:
            while True:
                asked = _clocks()
                try:
                    response = client.increment_concurrency_slots_with_lease(
                        names=[self.limit], slots=1, mode="concurrency", lease_duration=self.seconds, holder=holder)
                    body = response.json()
                    if not body.get("limits"):
                        raise RuntimeError(f"the concurrency limit {self.limit} does not exist")
                    self.lease_id, self._confirmed = UUID(str(body["lease_id"])), asked
                    break
                except httpx.HTTPStatusError as e:
                    if e.response.status_code != 423:
                        raise
                    retry = float(e.response.headers.get("Retry-After") or 5)
                now = time.monotonic()
                if now - started >= timeout:
                    raise LockTimeout(f"cluster {self.cluster}: its lock was not free within {timeout / 60:.0f} min")
                if now >= next_report:
                    next_report = now + report_seconds()
                    waiting(now - started)
                time.sleep(max(0.2, min(retry, self.poll_cap, next_report - now, timeout - (now - started))))
        self._thread = threading.Thread(target=self._renew, name=f"hci-upgrade-lease-{self.cluster}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        # A renewal that fails or hangs is tried again within seconds, not a quarter of the lease later: a server
        # busy for a minute (a large fleet under an accelerated clock, measured) must not cost a run its lease.
        # The pause doubles from 5 s while it keeps failing, so that hundreds of leases do not bury a slow server.
        every = self.seconds / 4
        with get_client(sync_client=True, httpx_settings={"timeout": max(5.0, self.seconds / 8)}) as client:
            pause = every
            while not self._stop.wait(pause):
                asked, pause = _clocks(), min(every, 5.0 if pause == every else pause * 2)
                try:
                    client.renew_concurrency_lease(lease_id=self.lease_id, lease_duration=self.seconds)
                    self._confirmed, pause = asked, every
                except httpx.HTTPStatusError as e:
                    if e.response.status_code in (404, 410):
                        self.lost = (f"the Prefect server no longer knows the cluster lock's lease {self.lease_id} "
                                     "(it expired or was revoked): another run may hold the cluster now")
                        return
                    log.warning("renewing the lock's lease of %s: %s (tried again)", self.cluster, e)
                except Exception as e:  # noqa: BLE001 - a server restarting: tried again until the lease lapses
                    log.warning("renewing the lock's lease of %s: %s (tried again)", self.cluster, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lease_id is None:
            return
        for pause in (2, 4, 0):  # a server restarting answers again within seconds
            try:
                with get_client(sync_client=True) as client:
                    client.release_concurrency_slots_with_lease(self.lease_id)
                return
            except Exception as e:  # noqa: BLE001 - the lease expires on its own; say so and go on
                if not pause:
                    _warn("could not release the lock of %s (its lease lapses within %g s, or the next run "
                          "releases it): %s", self.cluster, self.seconds, e)
                time.sleep(pause)


def holders(cluster: str) -> list[dict[str, Any]]:
    """The runs of this cluster that the records say are alive (any machine), with the lease each took."""
    from hciupgrade.records import runs_in_progress

    return runs_in_progress(cluster)


def reclaim_dead_holder(cluster: str, limit: str) -> str | None:
    """A slot taken while the records show no live run of this cluster is a dead holder's: release the leases that
    dead runs recorded, and reset the count if the slot is still taken. Returns what was done, or None."""
    from hciupgrade.records.store import open_store

    store = open_store()
    if holders(cluster):
        return None
    with get_client(sync_client=True) as client:
        if not client.read_global_concurrency_limit_by_name(limit).active_slots:
            return None
        released = []
        for event in store.events(cluster=cluster, phases=["lock"]):
            if event.get("status") == "acquired" and event.get("lease_id"):
                try:
                    client.release_concurrency_slots_with_lease(UUID(str(event["lease_id"])))
                    released.append(event["run_id"])
                except Exception:  # noqa: BLE001 - a lease the server no longer knows
                    continue
        if client.read_global_concurrency_limit_by_name(limit).active_slots:
            _reset_slots(client, limit)
        return (f"released the lease of dead run(s) {', '.join(released)}" if released
                else "reset the slot count: no live run holds it and no lease was left to release")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _warn(message: str, *args: Any) -> None:
    """A line in the flow run's log (and the CLI's console, which shows warnings), or this module's log."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning(message, *args)
    except MissingContextError:
        log.warning(message, *args)


def _describe(cluster: str) -> str:
    runs = holders(cluster)
    if not runs:
        return "no live run of it in the records"
    return "; ".join(f"run {r['run_id']} on {r['host']} (process {r['pid']}) since {r['started']}, heartbeat "
                     f"{r['heartbeat']}" for r in runs)


_CHECKED_SERVERS: set[str] = set()


def check_lease_storage() -> None:
    """On a Prefect server, say once per process when it keeps leases in memory: a restart of that server forgets
    every lease, each run holding a cluster then stops (LostOwnership), and the slots stay taken until a later run
    reclaims them."""
    url = get_current_settings().api.url
    if url is None or url in _CHECKED_SERVERS:
        return
    _CHECKED_SERVERS.add(url)
    try:
        with get_client(sync_client=True) as client:
            settings = client.request("GET", "/admin/settings").json()
        storage = settings.get("server", {}).get("concurrency", {}).get("lease_storage", "")
    except Exception:  # noqa: BLE001 - a server that does not show its settings: nothing to say
        return
    if storage.endswith(".memory"):
        _warn("the Prefect server keeps the cluster locks' leases in memory: a restart of the server forgets them, "
              "and every run holding a cluster stops; start it with PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=%s",
              LEASE_STORAGE)


@contextmanager
def fleet_slot(limit: str, *, lease_seconds: float) -> Iterator[None]:
    """One of the fleet's K slots, held under a lease like a cluster's lock. Asked again every second while the
    slots are taken: Prefect's own `concurrency()` waits as long as the server's Retry-After (up to 30 s), so a wave
    could start with a slot freed a moment before and still wait half a minute for it."""
    lease = ClusterLease("fleet", limit, lease_seconds, poll_cap=1.0)
    lease.acquire(30 * 24 * 3600, lambda waited: _warn("waiting %s for a slot of %s", _duration(waited), limit))
    try:
        yield
    finally:
        lease.release()


_HELD: dict[str, Held] = {}  # clusters whose lock this process holds: a nested run takes it again at once


@contextmanager
def cluster_lock(cluster: str, *, lease_seconds: float, timeout_seconds: float = 6 * 3600) -> Iterator[Held]:
    """Hold the cluster: the host lock, then the one-slot limit under a lease. Yields what the run checks before
    each change (`Held.check`) and the lease's id, recorded for a later run."""
    key = cluster.lower()
    if key in _HELD:  # post-OS's rolling restart inside the post-OS run: the same hold, the same fence
        yield _HELD[key]
        return
    check_lease_storage()
    with host_lock(cluster, timeout=timeout_seconds):
        name = ensure_limit(cluster, reclaim_stale=embedded())
        lease = ClusterLease(cluster, name, lease_seconds)

        def waiting(waited: float) -> None:
            _warn("waiting for the lock of %s (%s so far): held by %s", cluster, _duration(waited), _describe(cluster))
            done = reclaim_dead_holder(cluster, name)
            if done:
                _warn("the lock of %s was held by a run that is dead by the records: %s", cluster, done)

        lease.acquire(timeout_seconds, waiting)
        held = Held(check=lease.check, lease_id=str(lease.lease_id))
        _HELD[key] = held
        try:
            yield held
        finally:
            _HELD.pop(key, None)
            lease.release()
