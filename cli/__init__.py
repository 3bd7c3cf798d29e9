"""The `hci-upgrade` command, apart from the flows it starts (kured's cmd/ apart from pkg/): app.py holds the
commands, simulate.py the demo and `sim serve` (the one module that brings the simulator and the flows
together), render.py every view and table, inputs.py bad input (one handler) and the exit codes."""

import os

# Prefect reads its settings at import, so before anything imports it: the run's story (INFO) goes to Prefect's
# API, where the UI shows it; the console shows warnings only, unless asked.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
