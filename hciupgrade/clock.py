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

    def wait_for(self, probe: Callable[[], T | None], *, timeout: float, poll: float) -> T | None:
        """Call `probe` every `poll` cluster seconds until it returns something truthy or `timeout` passes."""
        deadline = self.now() + timeout
        while True:
            value = probe()
            if value:
                return value
            if self.now() >= deadline:
                return None
            self.sleep(min(poll, max(0.0, deadline - self.now())))
