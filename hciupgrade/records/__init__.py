"""The run records: the recorder a run writes through (recorder.py), the store that keeps them on SQLite or
PostgreSQL (store.py), the views read back from them (reports.py), and the sentences of a run's log
(narration.py). What the notebook, the flows and the tests import is re-exported here."""

from hciupgrade.records.recorder import (
    PHASES,
    RunRecorder,
    cau_summary,
    frame,
    home,
    load_events,
    new_run_id,
    node_summary,
    now_iso,
    owned_nodes,
    phase_durations,
    run_alive,
    runs_in_progress,
)

__all__ = ["PHASES", "RunRecorder", "cau_summary", "frame", "home", "load_events", "new_run_id", "node_summary",
           "now_iso", "owned_nodes", "phase_durations", "run_alive", "runs_in_progress"]
