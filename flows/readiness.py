"""Readiness for the solution upgrade as a Prefect flow: the environment checker on every node of each cluster,
a pandas summary, optional remediation, and table and markdown artifacts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.rolling_upgrade import rolling_upgrade
from flows.runtime import connect, run_name
from hciupgrade.models import RunOptions, load_inventory
from hciupgrade.readiness.collect import run_checker
from hciupgrade.readiness.remediation import guidance, pool_space, remediate
from hciupgrade.readiness.summary import FrameBuilder, decide, failures


@task(name="environment-checker", task_run_name="checker-{cluster}", cache_policy=NO_CACHE, retries=1)
def check_cluster(inventory: str, cluster: str, install_module: bool) -> dict:
    """The environment checker on every node, and the pool's free space where a storage check failed. It
    changes nothing (installing the checker's module aside), so a retry repeats nothing that matters."""
    target = load_inventory(inventory).cluster(cluster)
    client = connect(target)
    try:
        rows, problems = run_checker(client, install_module=install_module)
        notes = {}
        if any(r["name"].endswith("Storage_Pool") or r["name"].endswith("_Storage") for r in rows
               if r["status"] != "SUCCESS"):
            notes["pool"] = pool_space(client)
        return {"rows": rows, "problems": [str(p) for p in problems], "notes": notes}
    finally:
        client.close()


@task(name="remediate", task_run_name="remediate-{cluster}", cache_policy=NO_CACHE, retries=0)
def remediate_cluster(inventory: str, cluster: str, rows: list[dict], steps: list[str]) -> list[dict]:
    """The operator's chosen remediation steps for what failed: a change, so never retried by Prefect (each step
    checks before it changes; a rerun of the flow does what is still needed)."""
    target = load_inventory(inventory).cluster(cluster)
    client = connect(target)
    try:
        return [r.__dict__ for r in remediate(client, [r for r in rows if r["status"] != "SUCCESS"], set(steps))]
    finally:
        client.close()


def readiness_of(inventory: str, cluster: str, install_module: bool, steps: list[str],
                 restart_options: dict | None) -> dict:
    """One cluster: check; with `steps`, remediate, restart what needs it through the rolling flow (a subflow:
    drain, restart, resume, resync, node by node, under the cluster's lock), and check again."""
    result = check_cluster(inventory, cluster, install_module)
    done: list[dict] = []
    if steps:
        done = remediate_cluster(inventory, cluster, result["rows"], steps)
        restart = sorted({r["node"] for r in done if r["restart"]})
        if restart:
            state = rolling_upgrade(inventory=inventory, cluster=cluster, return_state=True,
                                    options=RunOptions(restart_only=restart, **(restart_options or {})))
            done.append({"node": ", ".join(restart), "step": "rolling-restart", "changed": True,
                         "detail": "restarted" if state.is_completed() else f"FAILED: {state.message}"})
        if done:
            result = check_cluster(inventory, cluster, install_module)
    return {**result, "remediated": done}


def markdown_report(df: pd.DataFrame, notes: dict[str, dict[str, str]]) -> str:
    decision = decide(df)
    lines = ["# Solution-upgrade readiness", "", "| cluster | ready | blocking | advised |", "|---|---|---|---|"]
    lines += [f"| {c} | {'yes' if r.ready else '**no**'} | {r.blocking_checks} | {r.advised_checks} |"
              for c, r in decision.iterrows()]
    fails = failures(df)
    if not fails.empty:
        lines += ["", "## What to fix", ""]
        for (cluster, severity, title, name), group in fails.groupby(["cluster", "severity", "title", "name"],
                                                                     observed=True, sort=False):
            _, text = guidance(str(name))
            nodes = ", ".join(sorted(set(group["node"].astype(str))))
            lines.append(f"- **{cluster}**, {severity}: {title} on {nodes}. {text}")
            pool = notes.get(str(cluster), {}).get("pool")
            if pool and "Storage" in str(name):
                lines.append(f"  - {pool}")
    return "\n".join(lines)


@flow(name="readiness", flow_run_name=run_name("readiness"))
def readiness(inventory: str, clusters: list[str] | None = None, install_module: bool = False,
              remediate_steps: list[str] | None = None, out_dir: str | None = None,
              restart_options: dict | None = None) -> dict:
    parsed = load_inventory(inventory)
    names = clusters or [c.name for c in parsed.clusters]
    builder, problems, remediated, notes = FrameBuilder(), [], [], {}
    for name in names:
        result = readiness_of(inventory, name, install_module, remediate_steps or [], restart_options)
        builder.extend(result["rows"], name)
        problems += result["problems"]
        remediated += result["remediated"]
        notes[name] = result["notes"]
    df = builder.frame()
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        df.to_csv(Path(out_dir) / "readiness.csv", index=False)
        df.to_parquet(Path(out_dir) / "readiness.parquet", index=False)
    if not df.empty:
        table = decide(df).reset_index()
        create_table_artifact(table.astype(str).to_dict(orient="records"), key="readiness-clusters",
                              description="Solution-upgrade readiness per cluster")
        create_markdown_artifact(markdown_report(df, notes), key="readiness-remediation")
    return {"records": df.to_dict(orient="records"), "problems": problems, "remediated": remediated,
            "notes": notes}
