"""Benchmark: the maintenance window the OS path needs, as CAU sequences it and with hci-upgrade's levers.

The same simulated twin (the demo cluster's per-node shape: three VMs, setup 45-90 min, the feature update's
restart 40 min, resync by data written) runs twice in one process, 4 nodes and 16 nodes:
- cau: the feature update pass (drain, setup, restart, resume, node by node), then the cumulative update pass (the
  same again with wusa.exe), no staging: CAU's RollingUpgradePlugin run, then its WindowsUpdatePlugin run;
- ours: PreStage (setup's first phase on every node at once before the first drain) and one drain per node for
  the whole OS path, two ways: media that already carries the cumulative update (a refreshed ISO, or the LCU
  serviced into the media with DISM: the simulated setup installs 25398.1913 directly), the headline figure; and
  InstallCumulativeUpdateInSameDrain (the 2503 media, then wusa.exe and one more restart inside the drain).
Both live-migrate the VMs (the simulator lets mixed builds migrate here: the window is the question, not the
workload policy) and both end with every node on the same build at or above the checker's LCU minimum.

Cluster time is read from the simulator's event log (each event's `t`), not from the wall clock. At the default
factor (x1000) each remote call's latency still passes as cluster time (10 ms reads as 10 s) in both runs alike:
`--time-factor 200` shrinks that share fivefold at five times the wall time. Each run reports its window two ways:
from the first drain to the last resync (the nodes' absence: what a window must hold) and from the first action to
the last (staging included). The last line is JSON: {"nodes4": {"cau_minutes", "ours_minutes", "ratio", ...},
"nodes16": {...}}. Run: .venv/bin/python benchmarks/window.py [--time-factor F] [--sizes 4 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def twin(nodes: int, time_factor: float, serviced_media: bool = False) -> Any:
    """The demo cluster's per-node shape at any size; `serviced_media`: the setup media carries the LCU."""
    from hciupgrade.sim.scenario import builtin_scenario, make_scenario

    demo = builtin_scenario()
    extra = {"target_build": "10.0.25398.1913"} if serviced_media else {}
    scenario = make_scenario(nodes=nodes, vms_per_node=3, time_factor=time_factor,
                             knobs={"mixed_version_migration": "works", "second_hop": "allowed"}, **extra)
    return scenario.model_copy(update={"durations": demo.durations})


def run_passes(nodes: int, time_factor: float, passes: list[dict[str, Any]],
               serviced_media: bool = False) -> list[dict[str, Any]]:
    """Each pass a rolling_upgrade flow run on one simulated cluster; the simulator's event log at the end."""
    from flows.rolling_upgrade import rolling_upgrade
    from flows.runtime import embedded_settings
    from hciupgrade.models import RunOptions
    from hciupgrade.sim.harness import SimHarness

    with SimHarness(twin(nodes, time_factor, serviced_media)) as harness, tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.yaml"
        harness.inventory().write(inventory)
        os.environ.update(harness.environment())
        for options in passes:
            with embedded_settings():
                state = rolling_upgrade(inventory=str(inventory), options=RunOptions(
                    poll_seconds=30, retry_delay_seconds=0.2, workload_policy="live-migrate", **options),
                    return_state=True)
            if not state.is_completed():
                raise SystemExit(f"{nodes} nodes, {options}: the run did not complete: {state.message}")
        return harness.events()


def window(events: list[dict[str, Any]]) -> dict[str, float]:
    """Cluster minutes from the first drain to the last resync, and from the first action to the last."""
    ours = [e for e in events if e.get("by") and e["by"] != "system"]
    first_action = min(e["t"] for e in ours)
    first_drain = min(e["t"] for e in events if e["kind"] == "suspend")
    last_resume = max(e["t"] for e in events if e["kind"] == "resume")
    resynced = [e["t"] for e in events if e["kind"] == "storage_job" and e.get("status") == "Completed"
                and e["t"] >= last_resume]
    end = max(resynced) if resynced else last_resume
    builds = {e["node"]: e["new"] for e in events if e["kind"] == "build"}
    return {"drain_to_resync_min": (end - first_drain) / 60, "first_to_last_min": (end - first_action) / 60,
            "final_builds": len(set(builds.values()))}


def per_node(events: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each node's out-of-service spans (pause to resume), cluster minutes: the timeline plot's bars."""
    spans: dict[str, list[tuple[float, float]]] = {}
    opened: dict[str, float] = {}
    for e in events:
        if e["kind"] == "suspend":
            opened[e["node"]] = e["t"]
        elif e["kind"] == "resume" and e["node"] in opened:
            spans.setdefault(e["node"], []).append((opened.pop(e["node"]) / 60, e["t"] / 60))
    return spans


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time-factor", type=float, default=1000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--timeline", type=Path, help="write each run's per-node spans here (JSON, for the plot)")
    args = parser.parse_args()
    cau = [{}, {"update": "cumulative"}]
    ours = [{"pre_stage": True, "cumulative_in_drain": True}]  # on serviced media the LCU steps find it done
    result: dict[str, dict[str, float]] = {}
    spans: dict[str, Any] = {}
    for nodes in args.sizes:
        runs = {"cau": run_passes(nodes, args.time_factor, cau),
                "ours": run_passes(nodes, args.time_factor, ours, serviced_media=True),
                "ours_lcu_in_drain": run_passes(nodes, args.time_factor, ours)}
        measured = {name: window(events) for name, events in runs.items()}
        spans[f"nodes{nodes}"] = {name: per_node(events) for name, events in runs.items()}
        c = measured["cau"]
        row: dict[str, float] = {"cau_minutes": round(c["drain_to_resync_min"], 1),
                                 "cau_first_to_last_minutes": round(c["first_to_last_min"], 1),
                                 "time_factor": args.time_factor}
        line = (f"{nodes:2d} nodes  cau {c['drain_to_resync_min']:5.0f} min first drain to last resync "
                f"({c['first_to_last_min']:5.0f} first action to last)")
        for name in ("ours", "ours_lcu_in_drain"):
            o = measured[name]
            ratio = o["drain_to_resync_min"] / c["drain_to_resync_min"]
            row.update({f"{name}_minutes": round(o["drain_to_resync_min"], 1), f"{name.replace('ours', 'ratio')}":
                        round(ratio, 3), f"{name}_first_to_last_minutes": round(o["first_to_last_min"], 1)})
            line += (f"   {name} {o['drain_to_resync_min']:5.0f} ({o['first_to_last_min']:5.0f}) ratio {ratio:.2f} "
                     f"({o['first_to_last_min'] / c['first_to_last_min']:.2f})")
        print(line)
        result[f"nodes{nodes}"] = row
    if args.timeline:
        args.timeline.write_text(json.dumps(spans))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
