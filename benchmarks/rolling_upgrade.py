"""Benchmark: the demo scenario's rolling upgrade, end to end, through Prefect (embedded) and real PowerShell
remoting against the simulated cluster, which runs in its own process as a real cluster would.

Prints: wall time, the one-time start-up (Prefect's embedded server, the fake endpoints), the simulated work on the
critical path (drain, install, reboot, resync: cluster time / time factor), the orchestration overhead per node
((wall - start-up - simulated work) / nodes), and the median and 95th percentile of one remote call. The last line
is one JSON object. Run: .venv/bin/python benchmarks/rolling_upgrade.py [--scenario FILE] [--transport T]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def serve(scenario_path: str | None, transport: str, conn) -> None:  # noqa: ANN001 - a multiprocessing connection
    from hciupgrade.sim.harness import SimHarness
    from hciupgrade.sim.scenario import builtin_scenario, load_scenario

    scenario = load_scenario(scenario_path) if scenario_path else builtin_scenario()
    with SimHarness(scenario, transport=transport) as harness:  # type: ignore[arg-type]
        conn.send((harness.inventory().model_dump(mode="json"), harness.password))
        conn.recv()  # until the orchestrator is done
        conn.send(harness.events())


def critical_path_work(events: list[dict], time_factor: float) -> float:
    """Cluster seconds the simulated cluster itself needed, summed over the steps that must run one after another."""
    total = 0.0
    opened: dict[tuple[str, str], float] = {}
    for e in events:
        node, kind, t = e["node"], e["kind"], e["t"]
        if kind == "suspend":
            opened[(node, "drain")] = t
        elif kind == "drain" and e["status"] == "Completed" and (node, "drain") in opened:
            total += t - opened.pop((node, "drain"))
        elif kind == "install" and e["status"] == "Running":
            opened[(node, "install")] = t
        elif kind == "install" and (node, "install") in opened:
            total += t - opened.pop((node, "install"))
        elif kind == "restart":
            opened[(node, "reboot")] = t
        elif kind == "node_state" and e["cause"] == "join" and (node, "reboot") in opened:
            total += t - opened.pop((node, "reboot"))
        elif kind == "resume":
            opened[("cluster", "resync")] = t
        elif kind == "storage_job" and e["status"] == "Completed" and ("cluster", "resync") in opened:
            last_completed = t
            opened[("cluster", "resync-end")] = last_completed
        elif kind == "suspend_refused":
            pass
    # a resync ends with its last job: pair each resume with the last completion before the next suspend
    resumes = [e["t"] for e in events if e["kind"] == "resume"]
    completions = [e["t"] for e in events if e["kind"] == "storage_job" and e["status"] == "Completed"]
    suspends = [e["t"] for e in events if e["kind"] == "suspend"] + [float("inf")]
    for r in resumes:
        nxt = min(s for s in suspends if s > r)
        done = [c for c in completions if r <= c < nxt]
        if done:
            total += max(done) - r
    return total / time_factor


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", help="scenario file (default: the demo)")
    parser.add_argument("--transport", default="negotiate", choices=["negotiate", "https", "basic"],
                        help="how the simulated nodes listen (default: Negotiate with message encryption, as a real "
                             "node)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(args.scenario, args.transport, child), daemon=True)
    proc.start()
    inventory_data, password = parent.recv()
    from prefect import flow

    from flows.locking import embedded_settings
    from flows.rolling_upgrade import rolling_upgrade
    from hciupgrade.models import Inventory, RunOptions
    from hciupgrade.remote.session import CALL_SECONDS
    from hciupgrade.sim.harness import PASSWORD_ENV

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    warm_up()  # starts Prefect's embedded server, once per process
    startup = time.perf_counter() - t0
    inventory = Inventory.model_validate(inventory_data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inventory.yaml"
        inventory.write(path)
        os.environ[PASSWORD_ENV] = password
        t1 = time.perf_counter()
        with embedded_settings():  # as `hci-upgrade demo` runs it
            state = rolling_upgrade(inventory=str(path),
                                    options=RunOptions(poll_seconds=5, retry_delay_seconds=0.2), return_state=True)
        run_wall = time.perf_counter() - t1
    wall = time.perf_counter() - t0  # the simulated cluster's teardown below is not the orchestrator's time
    parent.send("done")
    events = parent.recv()
    proc.join(timeout=5)
    cluster = inventory.clusters[0]
    nodes = len(cluster.nodes)
    work = critical_path_work(events, cluster.time_factor)
    calls = sorted(CALL_SECONDS)
    p50 = statistics.median(calls) * 1000
    p95 = calls[int(0.95 * (len(calls) - 1))] * 1000
    overhead = (wall - startup - work) / nodes
    print(f"upgrade: {'completed' if state.is_completed() else 'FAILED'} on {nodes} nodes, transport "
          f"{args.transport}")
    print(f"wall time                 {wall:8.2f} s   (the upgrade flow alone: {run_wall:.2f} s)")
    print(f"start-up (Prefect, sim)   {startup:8.2f} s")
    print(f"simulated work (critical) {work:8.2f} s   (x{cluster.time_factor:g}: "
          f"{work * cluster.time_factor / 3600:.1f} h of cluster time)")
    print(f"overhead per node         {overhead:8.2f} s   (target < 0.5)")
    print(f"remote call               p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(calls)} calls (target p50 < 20)")
    print(json.dumps({"transport": args.transport, "wall_s": round(wall, 3), "startup_s": round(startup, 3),
                      "simulated_work_s": round(work, 3),
                      "overhead_per_node_s": round(overhead, 3), "remote_call_p50_ms": round(p50, 2),
                      "remote_call_p95_ms": round(p95, 2)}))
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
