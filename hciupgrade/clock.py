"""Cluster time for the orchestrator: timeouts and polls are in cluster seconds, so the same run options hold
against a real cluster (factor 1) and a simulated one that runs faster (the inventory's time_factor)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ClusterClock:
    def __init__(self, time_factor: float = 1.0) -> None:
        self.time_factor = time_factor

    def now(self) -> float:
        return time.monotonic() * self.time_factor

    def sleep(self, cluster_seconds: float) -> None:
        time.sleep(max(0.0, cluster_seconds / self.time_factor))

    def wait_for(self, probe: Callable[[], T | None], *, timeout: float, poll: float,
                 max_poll: float | None = None, expected: float | None = None) -> T | None:
        """Call `probe` until it returns something truthy or `timeout` passes: every `poll` cluster seconds at
        first, then every twentieth of the time waited so far, up to `max_poll`. A 20-second drain is still seen
        within a poll; a 60-minute setup is read once a minute (at most 5% late), not 720 times.

        `expected`: how long the same wait took before (another node of the cluster, this run). The polls then
        come back to every `poll` seconds from nine tenths of it, and back off again from there: the end is seen
        within a poll instead of within a minute, with no more polls."""
        start = self.now()
        deadline = start + timeout
        ceiling = max(poll, max_poll if max_poll is not None else poll)
        near = start + 0.9 * expected if expected else None
        while True:
            value = probe()
            if value:
                return value
            now = self.now()
            if now >= deadline:
                return None
            since = now - start if near is None or now < near else now - near
            interval = min(max(poll, since / 20), ceiling)
            if near is not None and now < near:
                interval = min(interval, max(poll, near - now))  # wake at nine tenths of the expected end
            self.sleep(min(interval, max(0.0, deadline - now)))
