"""Benchmark: build 1,000,000 environment-checker result records (5,000 clusters x 4 nodes x 50 checks) in the
shapes the real module writes, normalise them as the CLI does, and summarise them (decision, per-cluster table,
fleet view, failure list). Targets: summary under 3 s, peak memory under 1.5 GB. The last line is one JSON object.
Run: .venv/bin/python benchmarks/readiness_summary.py [--clusters 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time

from hciupgrade.readiness.results import normalise
from hciupgrade.readiness.summary import FrameBuilder, cluster_table, decide, failures, fleet

CHECKS = [(f"AzStackHci_Upgrade_Check{i:02d}", f"Check number {i}", "CRITICAL" if i % 3 else "WARNING")
          for i in range(50)]


def records(clusters: int, nodes: int, seed: int = 7):
    rng = random.Random(seed)
    for c in range(clusters):
        cluster = f"hci-{c:05d}"
        for n in range(nodes):
            node = f"{cluster}-n{n + 1}"
            for name, title, severity in CHECKS:
                failed = rng.random() < 0.01
                numeric = rng.random() < 0.5  # plain ConvertTo-Json writes numbers, the module's converter names
                yield cluster, {
                    "Name": name, "DisplayName": f"{title} {node}", "Title": title, "Tags": {},
                    "Status": (1 if failed else 0) if numeric else ("FAILURE" if failed else "SUCCESS"),
                    "Severity": {"CRITICAL": 2, "WARNING": 1}[severity] if numeric else severity,
                    "Description": title, "Remediation": "https://aka.ms/UpgradeRequirements",
                    "TargetResourceID": node, "TargetResourceName": node, "TargetResourceType": "Node",
                    "Timestamp": "/Date(1767225600000)/" if numeric else "2026-01-01T00:00:00.0000000Z",
                    "AdditionalData": {"Source": node, "Status": "FAILURE" if failed else "SUCCESS",
                                       "Detail": "" if not failed else f"{title} failed on {node}"},
                    "HealthCheckSource": ""}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=5000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    builder = FrameBuilder()
    count = 0
    for cluster, raw in records(args.clusters, 4):
        builder.add(normalise(raw, "bench"), cluster)
        count += 1
    df = builder.frame()
    del builder
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    decision = decide(df)
    table = cluster_table(df)
    clusters, blocking = fleet(df)
    fails = failures(df)
    summary_s = time.perf_counter() - t1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"records                {count:,}")
    print(f"build + normalise      {build_s:.2f} s")
    print(f"summary                {summary_s:.2f} s  (target < 3 s): {int(decision['ready'].sum())} of "
          f"{len(decision)} clusters ready, {len(fails):,} failed checks, {len(table):,} table rows")
    print(f"most blocking check    {blocking.iloc[0]['name']} ({blocking.iloc[0]['clusters_blocked']} clusters)")
    print(f"peak RSS               {peak_mb:.0f} MB  (target < 1500)")
    print(json.dumps({"records": count, "summary_s": round(summary_s, 3), "peak_rss_mb": round(peak_mb)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
