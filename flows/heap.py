"""The orchestrating process's heap. Prefect, pydantic and pandas leave about a million long-lived objects once
imported and started; a full collection walks every one of them (0.2-0.3 s on this project's test machine), and
one fell inside every rolling upgrade, on its critical path. Frozen once, after start-up, they are left out of
later collections (gc.freeze, as CPython documents), so a collection walks only what the run itself allocates."""

from __future__ import annotations

import gc
import threading

_frozen = False
_lock = threading.Lock()


def freeze_startup_heap() -> None:
    """Once a process: collect what start-up left behind, then freeze the rest. Later calls do nothing, so a
    fleet's subflows (threads of one process) and a worker's flow runs share the one freeze."""
    global _frozen
    with _lock:
        if _frozen:
            return
        _frozen = True
        gc.collect()  # garbage frozen now would never be collected
        gc.freeze()
