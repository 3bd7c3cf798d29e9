"""How the run records scale: writes N realistic past runs (default 20,000: 200 clusters of 4 nodes, 100 runs
each, what a fleet writes in a year or two) to a fresh store, then times what every operator and every run pays:
`hci-upgrade status` as a command (a new process, imports included), the reads a run does before it touches
anything (runs in progress, nodes owned), and a report's read of one run. The same is timed with one past run.

    python benchmarks/records.py [--runs 20000] [--url postgresql://...]

Its last line is one JSON object: runs, status_s, reconcile_s (and the one-run figures beside them)."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hciupgrade.records import PHASES, owned_nodes, runs_in_progress  # noqa: E402
from hciupgrade.records.reports import run_report  # noqa: E402
from hciupgrade.records.store import RecordStore  # noqa: E402

# a node's steps in a default run (the shut-down policy; PreStage and the LCU in the same drain off: 0 minutes)
MINUTES = {"gate": 0.2, "stop-vms": 1, "drain": 4, "install": 60, "reboot": 40, "wait-back": 2, "install-lcu": 0,
           "reboot-lcu": 0, "wait-back-lcu": 0, "wait-repair": 1, "resume": 0.5, "start-vms": 1, "wait-storage": 25,
           "pre-script": 0, "post-script": 0}


def run_events(run_id: str, cluster: str, started: datetime, rng: random.Random) -> list[dict]:
    """The events of one past run as the engine writes them: header, reconcile, preflight, plan, every node's
    phases and ownership, the end with its outcome. One run in ten fails a node; one in twenty is a dry run."""
    def at(t: datetime) -> str:
        return t.isoformat(timespec="milliseconds")

    nodes = [f"{cluster}-n{i}" for i in range(1, 5)]
    dry = rng.random() < 0.05
    base = {"run_id": run_id, "cluster": cluster, "error": None, "time_factor": 1.0}
    t = started
    events = [{**base, "node": None, "phase": "run", "status": "running", "start": at(t), "end": None,
               "dry_run": dry, "pid": rng.randint(1000, 60000), "host": "worker-1",
               "options": {"NodeOrder": nodes, "MaxRetriesPerNode": 3, "RebootTimeoutMinutes": 15}}]
    for check in ("cluster reachable", "every node Up", "storage healthy", "no repair jobs", "quorum", "CAU role"):
        events.append({**base, "node": None, "phase": "preflight", "status": "succeeded", "start": at(t),
                       "end": at(t), "check": check, "detail": "ok", "blocking": False})
    events.append({**base, "node": None, "phase": "plan", "status": "succeeded", "start": at(t), "end": at(t),
                   "order": nodes, "actions": {n: "upgrade" for n in nodes}, "positions": {n: "fresh" for n in nodes}})
    failed_node = rng.choice(nodes) if rng.random() < 0.1 and not dry else None
    for node in [] if dry else nodes:
        events.append({**base, "node": node, "phase": "node", "status": "running", "start": at(t), "end": None,
                       "build_before": "10.0.20349.2966", "position": "fresh", "steps": list(PHASES)})
        for phase in PHASES:
            minutes = MINUTES[phase] * rng.uniform(0.7, 1.6)
            if not minutes:
                continue
            end = t + timedelta(minutes=minutes)
            status = "failed" if node == failed_node and phase == "install" else "succeeded"
            events.append({**base, "node": node, "phase": phase, "status": "running", "start": at(t), "end": None})
            events.append({**base, "node": node, "phase": phase, "status": status, "start": at(t), "end": at(end),
                           "error": "setup exited 0x80070643" if status == "failed" else None})
            if phase == "drain":
                events.append({**base, "node": node, "phase": "ownership", "status": "paused", "start": at(end),
                               "end": None, "mark": run_id})
            if phase == "resume":
                events.append({**base, "node": node, "phase": "ownership", "status": "released", "start": at(end),
                               "end": None})
            t = end
        events.append({**base, "node": node, "phase": "node", "status": "succeeded", "start": at(t), "end": at(t),
                       "result": "upgraded", "attempts": 2 if node == failed_node else 1,
                       "build_before": "10.0.20349.2966", "build_after": "10.0.25398.1486"})
    outcome = {"run_id": run_id, "cluster": cluster, "succeeded": True, "error": None,
               "nodes": [{"node": n, "result": "skipped" if dry else "upgraded"} for n in nodes]}
    events.append({**base, "node": None, "phase": "run", "status": "succeeded", "start": at(t), "end": at(t),
                   "dry_run": dry, "refused": False, "outcome": outcome})
    return events


def fill(store: RecordStore, runs: int, clusters: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=730)
    per_cluster = max(1, runs // clusters)
    batch: list[dict] = []
    written = 0
    for k in range(runs):
        cluster = f"hci-{k % clusters:03d}"
        started = start + timedelta(days=730 * (k // clusters) / per_cluster, minutes=k % clusters)
        batch += run_events(f"{started:%Y%m%dT%H%M%S}-{k:06x}", cluster, started, rng)
        if len(batch) > 20_000:
            store.append_many(batch, host="worker-1", pid=1)
            written += len(batch)
            batch = []
    if batch:
        store.append_many(batch, host="worker-1", pid=1)
        written += len(batch)
    return written


def timed(fn, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure(url: str, home: Path, cluster: str) -> dict[str, float]:
    store = RecordStore(url)
    env = {**os.environ, "HCI_UPGRADE_HOME": str(home), "HCI_UPGRADE_RECORDS_URL": url}
    command = [sys.executable, "-c", "from cli.app import app; app()", "status", cluster]

    def status() -> None:
        subprocess.run(command, env=env, check=True, capture_output=True)

    def reconcile() -> None:
        runs_in_progress(cluster, store=store, settle=True)
        owned_nodes(cluster, store=store)

    latest = store.latest_run(cluster)["run_id"]
    return {"status_s": timed(status, 3), "reconcile_s": timed(reconcile),
            "report_read_s": timed(lambda: run_report(latest, store))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--url", help="a PostgreSQL URL (an empty database); default: SQLite in a temporary home")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = {}
        for label, runs in (("one", 1), ("many", args.runs)):
            home = Path(tmp) / label
            url = f"sqlite:///{home / 'records.sqlite'}" if not args.url else args.url
            store = RecordStore(url)
            if args.url:  # one database for both: the one-run figures are taken before it fills
                runs = runs - store.count_runs()
            t0 = time.perf_counter()
            events = fill(store, runs, min(args.clusters, runs))
            write_s = time.perf_counter() - t0
            size = (home / "records.sqlite").stat().st_size / 1e6 if not args.url else float("nan")
            figures[label] = {"runs": store.count_runs(), "events": events, "write_s": write_s, "size_mb": size,
                              **measure(url, home, "hci-000")}
            f = figures[label]
            print(f"{f['runs']:>6} runs ({f['events']:,} events, {f['size_mb']:.0f} MB, written in "
                  f"{f['write_s']:.1f} s): status {f['status_s']:.2f} s (the command, a new process), "
                  f"reconcile reads {f['reconcile_s'] * 1000:.1f} ms, "
                  f"one run's report {f['report_read_s'] * 1000:.1f} ms")
    many, one = figures["many"], figures["one"]
    print(json.dumps({"runs": many["runs"], "status_s": round(many["status_s"], 3),
                      "reconcile_s": round(many["reconcile_s"], 4), "status_one_run_s": round(one["status_s"], 3),
                      "reconcile_one_run_s": round(one["reconcile_s"], 4), "events": many["events"],
                      "store": "postgresql" if args.url else "sqlite"}))


if __name__ == "__main__":
    main()
