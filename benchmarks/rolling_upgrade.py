"""Benchmark: the demo scenario's rolling upgrade, end to end, through Prefect (embedded) and real PowerShell
remoting against the simulated cluster, which runs in its own process as a real cluster would.

Prints, for each of --runs upgrades (each of a freshly started simulated cluster): the flow's wall time and the
simulated work on the critical path (drain, install, reboot, resync: cluster time / time factor); the orchestration
overhead per node ((flow wall - simulated work) / nodes), the median over the runs being the figure; the
orchestrating process's CPU seconds a node (the simulated cluster and Prefect's server are processes of their
own); the one-time start-up (Prefect's embedded server); and the median and 95th percentile of one remote call.
The last line is one JSON object.
Run: .venv/bin/python benchmarks/rolling_upgrade.py [--runs N] [--scenario FILE] [--transport T]
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


def run_once(scenario: str | None, transport: str, extra: dict | None = None) -> dict:
    """One rolling upgrade of a freshly started simulated cluster: the flow's wall time, the cluster's own work on
    the critical path, and the overhead per node."""
    from flows.rolling_upgrade import rolling_upgrade
    from flows.runtime import embedded_settings
    from hciupgrade.models import Inventory, RunOptions
    from hciupgrade.sim.harness import PASSWORD_ENV

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(scenario, transport, child), daemon=True)
    proc.start()
    inventory_data, password = parent.recv()
    inventory = Inventory.model_validate(inventory_data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inventory.yaml"
        inventory.write(path)
        os.environ[PASSWORD_ENV] = password
        t1, cpu1 = time.perf_counter(), time.process_time()
        with embedded_settings():  # as `hci-upgrade demo` runs it
            state = rolling_upgrade(inventory=str(path),
                                    options=RunOptions(poll_seconds=5, retry_delay_seconds=0.2, **(extra or {})),
                                    return_state=True)
        flow_wall, cpu = time.perf_counter() - t1, time.process_time() - cpu1
    parent.send("done")
    events = parent.recv()  # the simulated cluster's teardown is not the orchestrator's time
    proc.join(timeout=5)
    cluster = inventory.clusters[0]
    work = critical_path_work(events, cluster.time_factor)
    return {"completed": state.is_completed(), "nodes": len(cluster.nodes), "flow_wall_s": flow_wall,
            "work_s": work, "overhead_per_node_s": (flow_wall - work) / len(cluster.nodes),
            "cpu_per_node_s": cpu / len(cluster.nodes),
            "time_factor": cluster.time_factor}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", help="scenario file (default: the demo)")
    parser.add_argument("--transport", default="negotiate", choices=["negotiate", "https", "basic"],
                        help="how the simulated nodes listen (default: Negotiate with message encryption, as a real "
                             "node)")
    parser.add_argument("--runs", type=int, default=5,
                        help="upgrades measured, each of a fresh simulated cluster; the median is the figure (this "
                             "machine's timings vary by about 0.1 s a node from run to run)")
    parser.add_argument("--options", type=Path, help="run options (YAML) on top of the benchmark's, e.g. "
                                                      "WorkloadPolicy: live-migrate")
    args = parser.parse_args()
    import yaml

    extra = yaml.safe_load(args.options.read_text()) if args.options else {}
    t0 = time.perf_counter()
    from prefect import flow

    from hciupgrade.remote.session import CALL_SECONDS

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    warm_up()  # starts Prefect's embedded server, once per process
    startup = time.perf_counter() - t0
    runs = [run_once(args.scenario, args.transport, extra) for _ in range(args.runs)]
    first = runs[0]
    overhead = statistics.median(r["overhead_per_node_s"] for r in runs)
    calls = sorted(CALL_SECONDS)
    p50 = statistics.median(calls) * 1000
    p95 = calls[int(0.95 * (len(calls) - 1))] * 1000
    completed = all(r["completed"] for r in runs)
    print(f"upgrade: {'completed' if completed else 'FAILED'} on {first['nodes']} nodes, transport "
          f"{args.transport}, {len(runs)} runs")
    print(f"start-up (Prefect)        {startup:8.2f} s   (once per process)")
    for i, r in enumerate(runs, 1):
        print(f"run {i}: flow {r['flow_wall_s']:6.2f} s, simulated work (critical path) {r['work_s']:6.2f} s "
              f"(x{r['time_factor']:g}: {r['work_s'] * r['time_factor'] / 3600:.1f} h of cluster time), overhead "
              f"{r['overhead_per_node_s']:.2f} s a node, orchestrator CPU {r['cpu_per_node_s']:.2f} s a node")
    print(f"overhead per node         {overhead:8.2f} s   (median; target < 0.5)")
    print(f"remote call               p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(calls)} calls (target p50 < 20)")
    print(json.dumps({"transport": args.transport, "runs": len(runs), "startup_s": round(startup, 3),
                      "flow_wall_s": [round(r["flow_wall_s"], 3) for r in runs],
                      "simulated_work_s": [round(r["work_s"], 3) for r in runs],
                      "overhead_per_node_s": round(overhead, 3),
                      "overhead_per_node_runs_s": [round(r["overhead_per_node_s"], 3) for r in runs],
                      "cpu_per_node_s": round(statistics.median(r["cpu_per_node_s"] for r in runs), 3),
                      "remote_call_p50_ms": round(p50, 2), "remote_call_p95_ms": round(p95, 2)}))
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
