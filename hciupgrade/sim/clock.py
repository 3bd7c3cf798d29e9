"""A scaled clock: cluster time runs `time_factor` times faster than the wall clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class ScaledClock:
    """Cluster seconds since the simulation started; monotonic, thread-safe, scaled from the wall clock."""

    def __init__(self, time_factor: float, epoch: datetime | None = None) -> None:
        if time_factor <= 0:
            raise ValueError("time_factor must be positive")
        self.time_factor = time_factor
        self.epoch = epoch or datetime.now(UTC)
        self._t0 = time.monotonic()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return (time.monotonic() - self._t0) * self.time_factor + self._offset

    def advance(self, seconds: float) -> None:
        """Jump forward (tests and benchmarks that do not want to wait)."""
        with self._lock:
            self._offset += seconds

    def datetime_at(self, t: float) -> datetime:
        return self.epoch + timedelta(seconds=t)

    def wall_seconds(self, cluster_seconds: float) -> float:
        return cluster_seconds / self.time_factor
