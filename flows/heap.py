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
    """Once a process; later calls do nothing, so a fleet's subflows (threads of one process) share the one
    freeze. No collection first: it would cost the run the very pause this avoids; what start-up left as cyclic
    garbage stays, once (a few MB at most)."""
    global _frozen
    with _lock:
        if _frozen:
            return
        _frozen = True
        gc.freeze()
