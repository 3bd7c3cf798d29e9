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

        `expected`: how long the same wait took before (on another node of the cluster, this run). Around that
        time, from nine tenths to one and a half of it, the probe runs every `poll` seconds or every 120th of the
        expected time, whichever is longer: a setup that took an hour on the last node is seen ending within 30 s
        on this one (not within a minute), with about 40 reads in that stretch rather than 200 (benchmarks/
        rolling_upgrade.py counts them as overhead)."""
        start = self.now()
        deadline = start + timeout
        ceiling = max(poll, max_poll if max_poll is not None else poll)
        near, far = (start + 0.9 * expected, start + 1.5 * expected) if expected else (None, None)
        while True:
            value = probe()
            if value:
                return value
            now = self.now()
            if now >= deadline:
                return None
            interval = min(max(poll, (now - start) / 20), ceiling)
            if near is not None and far is not None:
                if now < near:
                    interval = min(interval, max(poll, near - now))  # wake when the end may come
                elif now < far:
                    interval = max(poll, expected / 120)
            self.sleep(min(interval, max(0.0, deadline - now)))
