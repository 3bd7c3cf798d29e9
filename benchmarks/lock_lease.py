"""Measure how long a SIGKILLed run keeps its cluster's lock in server mode (a real Prefect server on loopback).

The lease of a global concurrency limit outlives a killed holder until it expires (RunOptions.lock_lease_seconds,
at least 60) and the server's repossessor (every 15 s) revokes it. Prints the seconds from the kill until another
process holds the lock; the last line is one JSON object. Takes a minute or two.
Run: .venv/bin/python benchmarks/lock_lease.py [--lease 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HOLDER = """
import sys, time
from flows.locking import cluster_lock
with cluster_lock("lease-bench", lease_seconds=float(sys.argv[1])):
    print("held", flush=True)
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lease", type=float, default=60)
    args = parser.parse_args()
    home = tempfile.mkdtemp()
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": home, "HCI_UPGRADE_HOME": home, "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "ERROR"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{api}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        env["PREFECT_API_URL"] = api
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.lease)], env=env, stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed = time.monotonic()
        waiter = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(3600)", "pass"), str(args.lease)],
                                env=env, capture_output=True, text=True, timeout=args.lease * 4 + 120)
        released = time.monotonic() - killed
        ok = waiter.stdout.strip() == "held"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    print(f"lease {args.lease:g} s: the lock of a SIGKILLed holder was taken again {released:.1f} s after the kill"
          f" ({'ok' if ok else 'FAILED'})")
    print(json.dumps({"lease_s": args.lease, "released_after_kill_s": round(released, 1), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
