"""The analysis notebook runs on records of simulated runs and draws its plots, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from hciupgrade.sim.cluster import SimCluster
from hciupgrade.sim.scenario import make_scenario
from tests.test_properties import engine_for

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "run_analysis.ipynb"


def test_the_notebook_plots_records_of_simulated_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    from hciupgrade.models import RunOptions

    for faults in ([], [{"node": "node2", "kind": "install_fails", "times": 1}]):
        scenario = make_scenario(nodes=3, time_factor=20000, faults=faults)
        options = RunOptions(poll_seconds=30, target_build=scenario.cluster.target_build)
        engine_for(SimCluster(scenario), options, None).run()
    monkeypatch.setenv("HCI_UPGRADE_CLUSTER", "HCI-DEMO")  # selected through the store's index
    dry, _ = engine_for(SimCluster(scenario), options, None).run(dry_run=True)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the timeline, the durations, predicted against actual
    text = "".join(o.get("text", "") for o in outputs)
    assert "3 runs (2 real)" in text and "dry run" in str(outputs)
