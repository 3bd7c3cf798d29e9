"""A fleet against a real Prefect server on this machine: a throwaway PostgreSQL, `prefect server start` on it,
N simulated clusters of 4 nodes served by `hci-upgrade sim serve` processes, and `hci-upgrade fleet` with every
cluster in one wave and K = N (all at once). First one cluster alone (the slowest cluster's time: the clusters are
alike), then the fleet. Prints the wall times, their ratio, the orchestrator's and the Prefect server's peak
memory and CPU, and per node upgraded the CPU seconds of ours (orchestrator and server) and per cluster in flight
the memory it adds; its last line is one JSON object (clusters, wall_s, slowest_cluster_s, ratio, peak_rss_mb,
cpu_s_per_node, rss_mb_per_cluster, ...).

With `--clusters-per-run B` the fleet runs as on a server for a large fleet: the deployment file deployed, W
process workers (`--workers`), and the fleet's clusters in batch runs of B clusters each, taken by the workers
(flows/batches.py); "orchestrator" is then the fleet's process and the workers with every batch run they started.

    python benchmarks/fleet.py [--clusters 200] [--time-factor 200] [--per-serve 50] [--clusters-per-run 50]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hciupgrade.sim.harness import PASSWORD_ENV  # noqa: E402
from hciupgrade.sim.scenario import Durations, make_scenario  # noqa: E402
from tests.services import PREFECT, create_database, postgres, prefect_server, stop  # noqa: E402

CLI = [sys.executable, "-c", "from cli.app import app; app()"]


def group_usage(pgid: int) -> tuple[float, float]:
    """(resident MB now, CPU seconds so far) of every process in a process group."""
    rss = cpu = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            cpu += (int(fields[11]) + int(fields[12])) / tick
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    return rss, cpu


def tree_usage(pids: list[int]) -> tuple[float, float]:
    """(resident MB now, CPU seconds so far) of processes and all their descendants, the ones that ended
    included (a reaped child's CPU is in its parent's children times)."""
    rss = cpu = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in tree:
            try:
                times, memory = p.cpu_times(), p.memory_info()
            except psutil.NoSuchProcess:
                continue
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += memory.rss / 1e6
    return rss, cpu


class Sampler:
    """Peak resident memory and CPU of a process group (or of process trees, `trees`), sampled every 0.5 s."""

    def __init__(self, pgid: int, trees: list[int] | None = None) -> None:
        self.usage = (lambda: tree_usage(trees)) if trees else (lambda: group_usage(pgid))
        self.peak, self.cpu = 0.0, 0.0
        self.cpu_before = self.usage()[1]  # CPU is counted from here on
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss, cpu = self.usage()
            self.peak, self.cpu = max(self.peak, rss), max(self.cpu, cpu - self.cpu_before)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def serve(clusters: int, per_serve: int, time_factor: float, folder: Path, env: dict) -> tuple[list, list[dict]]:
    scenario = make_scenario(nodes=4, vms_per_node=2, time_factor=time_factor, name="hci-f")
    scenario = scenario.model_copy(update={"durations": Durations(install_spread_minutes=0)})
    processes, inventories = [], []
    for start in range(0, clusters, per_serve):
        count = min(per_serve, clusters - start)
        name = f"hci-{start // per_serve:02d}"
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(scenario.model_copy(update={"cluster": scenario.cluster.model_copy(
            update={"name": name})}).model_dump(mode="json")))
        out = folder / f"{name}-inventory.yaml"
        processes.append(subprocess.Popen([*CLI, "sim", "serve", "--scenario", str(path), "--copies", str(count),
                                           "--inventory-out", str(out)], env=env, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        inventories.append(out)
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in inventories):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for process in processes:
                stop(process)
            raise RuntimeError("sim serve did not start")
        time.sleep(0.2)
    clusters_data = [c for p in inventories for c in yaml.safe_load(p.read_text())["clusters"]]
    return processes, clusters_data


def run_fleet(folder: Path, clusters: list[dict], env: dict, label: str, batch: int = 0, workers: list[int] = (),
              lease: float | None = None) -> tuple[float, float, float, dict]:
    inventory = folder / f"fleet-{label}.yaml"
    inventory.write_text(yaml.safe_dump({"clusters": clusters, "waves": {
        "canary": {"ring": "none"}, "batch": len(clusters), "max_parallel": len(clusters),
        "max_failure_rate": 1.0}}))
    options = folder / "options.yaml"
    options.write_text(yaml.safe_dump({"poll_seconds": 30, "retry_delay_seconds": 0.2,
                                       **({"lock_lease_seconds": lease} if lease else {})}))
    t0 = time.perf_counter()
    batches = ["--batch-deployment", "fleet-batch/fleet-batch", "--clusters-per-run", str(batch)] if batch else []
    process = subprocess.Popen([*CLI, "fleet", "--inventory", str(inventory), "--options", str(options), "--json",
                                *batches], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    sampler = Sampler(process.pid, [process.pid, *workers] if batch else None)
    out, err = process.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    summary = json.loads(out[out.index("{"):]) if "{" in out else {}
    if not summary:
        print(f"{label}: the fleet printed no result (exit {process.returncode}):\n{err[-3000:]}", file=sys.stderr)
    return wall, sampler.peak, sampler.cpu, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--time-factor", type=float, default=200,
                        help="cluster seconds per wall second (a 4-node cluster is about 10 cluster hours)")
    parser.add_argument("--per-serve", type=int, default=50, help="clusters per sim serve process")
    parser.add_argument("--clusters-per-run", type=int, default=0,
                        help="batch runs of this many clusters on process workers (0: the fleet's own process)")
    parser.add_argument("--workers", type=int, default=2, help="process workers for the batch runs")
    parser.add_argument("--lock-lease-seconds", type=float,
                        help="the runs' lock_lease_seconds (default 120): every lease is renewed four times a lease, "
                             "and the server's file lease storage rewrites an index of all leases at each renewal")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped benchmark still stops its servers and simulators
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg:
        folder = Path(tmp)
        env = {**os.environ, PASSWORD_ENV: "bench-secret", "HCI_UPGRADE_HOME": str(folder / "home"),
               "HCI_UPGRADE_RECORDS_URL": create_database(pg, "records"), "PREFECT_LOGGING_LEVEL": "WARNING"}
        with prefect_server(folder / "prefect", create_database(pg, "prefect")) as (api, server_env):
            env.update({"PREFECT_API_URL": api, "PREFECT_HOME": server_env["PREFECT_HOME"]})
            server_pgid = os.getpgid(int(next(p for p in Path("/proc").glob("[0-9]*")
                                              if "prefect" in _cmdline(p) and "server" in _cmdline(p)).name))
            serves, clusters = serve(args.clusters, args.per_serve, args.time_factor, folder, env)
            workers = start_workers(args.workers, folder, env) if args.clusters_per_run else []
            try:
                batch, pids = args.clusters_per_run, [w.pid for w in workers]
                server = Sampler(server_pgid)
                alone, alone_rss, alone_cpu, _ = run_fleet(folder, clusters[:1], env, "alone", batch, pids,
                                                           args.lock_lease_seconds)
                server.stop()
                alone_server_cpu = server.cpu
                server = Sampler(server_pgid)  # the fleet's share of the server, apart from the run alone
                wall, rss, cpu, summary = run_fleet(folder, clusters, env, "all", batch, pids,
                                                    args.lock_lease_seconds)
                server.stop()
                usages = [group_usage(p.pid) for p in serves]
                sim_rss, sim_cpu = sum(u[0] for u in usages), sum(u[1] for u in usages)
            finally:
                for p in [*serves, *workers]:
                    stop(p)
    states = [c["state"] for c in summary.get("clusters", [])]
    upgraded = states.count("upgraded")
    for c in summary.get("clusters", []):
        if c["state"] != "upgraded":
            print(f"not upgraded: {c['cluster']} {c['state']}: {c['reason']} ({states.count(c['state'])} "
                  f"{c['state']})")
            break
    ratio = wall / alone
    print(f"one cluster alone: {alone:.1f} s ({alone_rss:.0f} MB peak, {alone_cpu:.0f} CPU s)")
    print(f"{args.clusters} clusters at once: {wall:.1f} s, {upgraded} upgraded; ratio {ratio:.2f}")
    print(f"orchestrator (hci-upgrade fleet): peak RSS {rss:.0f} MB, CPU {cpu:.0f} s "
          f"({cpu / wall:.2f} cores on average)")
    print(f"Prefect server (uvicorn, PostgreSQL apart): peak RSS {server.peak:.0f} MB, CPU {server.cpu:.0f} s; "
          f"simulators (both runs): {sim_rss:.0f} MB, CPU {sim_cpu:.0f} s")
    print(f"machine: {os.cpu_count()} cores; children of this script: "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB max RSS")
    nodes = 4 * args.clusters
    cpu_per_node = (cpu + server.cpu) / nodes  # all of ours: the orchestrator and the Prefect server's share
    rss_per_cluster = max(0.0, rss - alone_rss) / max(1, args.clusters - 1)  # what each cluster in flight adds
    print(f"per node upgraded: {cpu_per_node:.2f} CPU s (orchestrator and server; alone: "
          f"{(alone_cpu + alone_server_cpu) / 4:.2f}); per cluster in flight: {rss_per_cluster:.1f} MB "
          "(goals: 0.3 CPU s, 8 MB)")
    print(json.dumps({"clusters": args.clusters, "wall_s": round(wall, 1), "slowest_cluster_s": round(alone, 1),
                      "ratio": round(ratio, 2), "peak_rss_mb": round(rss), "upgraded": upgraded,
                      "cpu_s_per_node": round(cpu_per_node, 3), "rss_mb_per_cluster": round(rss_per_cluster, 1),
                      "orchestrator_cpu_s": round(cpu), "server_peak_rss_mb": round(server.peak),
                      "server_cpu_s": round(server.cpu), "simulators_cpu_s": round(sim_cpu),
                      "simulators_rss_mb": round(sim_rss), "time_factor": args.time_factor,
                      "clusters_per_run": args.clusters_per_run, "workers": len(workers),
                      "lock_lease_seconds": args.lock_lease_seconds or 120}))


def start_workers(count: int, folder: Path, env: dict) -> list[subprocess.Popen]:
    """The deployment file deployed and `count` process workers on its pool, ONLINE before the first run."""
    run = {"env": {**env, "HCI_UPGRADE_CHECKOUT": str(ROOT)}, "capture_output": True, "timeout": 300}
    subprocess.run([*PREFECT, "work-pool", "create", "hci-upgrade-process", "--type", "process"], check=True, **run)
    subprocess.run([*PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"],
                   cwd=ROOT, check=True, **run)
    workers = []
    for i in range(count):
        home = folder / f"worker-{i + 1}"
        home.mkdir()
        workers.append(subprocess.Popen([*PREFECT, "worker", "start", "--pool", "hci-upgrade-process", "--name",
                                         home.name], env={**run["env"], "HCI_UPGRADE_HOME": str(home)}, cwd=home,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        seen = httpx.post(f"{api}/work_pools/hci-upgrade-process/workers/filter", json={}, timeout=10).json()
        if sum(w.get("status") == "ONLINE" for w in seen) >= count:
            return workers
        time.sleep(1)
    raise RuntimeError("the workers did not come online")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _cmdline(path: Path) -> str:
    try:
        return (path / "cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
