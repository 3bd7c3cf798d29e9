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
                 max_poll: float | None = None) -> T | None:
        """Call `probe` until it returns something truthy or `timeout` passes: every `poll` cluster seconds at
        first, then every twentieth of the time waited so far, up to `max_poll`. A 20-second drain is still seen
        within a poll; a 60-minute setup is read once a minute (at most 5% late), not 720 times."""
        start = self.now()
        deadline = start + timeout
        while True:
            value = probe()
            if value:
                return value
            now = self.now()
            if now >= deadline:
                return None
            interval = min(max(poll, (now - start) / 20), max(poll, max_poll if max_poll is not None else poll))
            self.sleep(min(interval, max(0.0, deadline - now)))
