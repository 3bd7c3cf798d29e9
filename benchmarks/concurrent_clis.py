"""Start N CLIs at once on this machine, each in embedded mode (its own temporary Prefect server on the shared
SQLite database), against one `hci-upgrade sim serve --azure`; print each one's exit code and seconds. Before
the start-up was serialised (flows/locking.py start_temporary_server), seven at once on a 2-core machine all
failed with "Timed out while attempting to connect to ephemeral Prefect API server". The last line is one JSON
object. Run: .venv/bin/python benchmarks/concurrent_clis.py [--clis 7]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CLI = [sys.executable, "-c", "from cli.app import app; app()"]


def run_clis(count: int, workdir: Path) -> list[dict[str, object]]:
    """`hci-upgrade updates --json` N times at once (a flow each, light on the cluster side)."""
    from hciupgrade.sim.harness import ARM_TOKEN_ENV, PASSWORD_ENV
    from hciupgrade.sim.scenario import make_scenario

    scenario = make_scenario(nodes=2, vms_per_node=1, time_factor=5000, build="10.0.25398.1913",
                             functional_level=12, pool_version=29)
    (workdir / "s.yaml").write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    env = {**os.environ, PASSWORD_ENV: "bench-secret", ARM_TOKEN_ENV: "bench-arm-token",
           "HCI_UPGRADE_HOME": str(workdir / "home"), "PREFECT_HOME": str(workdir / "prefect")}
    env.pop("PREFECT_API_URL", None)
    inventory = workdir / "inventory.yaml"
    serve = subprocess.Popen([*CLI, "sim", "serve", "--azure", "--scenario", str(workdir / "s.yaml"),
                              "--inventory-out", str(inventory)], env=env, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not inventory.exists():
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError("sim serve did not start")
            time.sleep(0.05)
        start = time.monotonic()
        clis = [subprocess.Popen([*CLI, "updates", "--inventory", str(inventory), "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
        results = []
        for cli in clis:
            out, errors = cli.communicate(timeout=600)
            updates = len(json.loads(out)["updates"]) if cli.returncode == 0 else 0
            results.append({"rc": cli.returncode, "seconds": round(time.monotonic() - start, 1),
                            "updates": updates, "stderr": errors[-400:] if cli.returncode else ""})
        return results
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clis", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_clis(args.clis, Path(tmp))
    for i, r in enumerate(results, 1):
        print(f"cli {i}: exit {r['rc']} after {r['seconds']} s" + (f": {r['stderr']}" if r["rc"] else ""))
    ok = sum(1 for r in results if r["rc"] == 0)
    print(json.dumps({"clis": args.clis, "succeeded": ok, "last_done_s": max(r["seconds"] for r in results)}))
    return 0 if ok == args.clis else 1


if __name__ == "__main__":
    sys.exit(main())
