"""Readiness summaries with pandas, from a node to the fleet, and the real decision rule: any Critical check that
did not succeed blocks the solution upgrade; a Warning one is advised; an Informational one never blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from hciupgrade.readiness.results import COLUMNS, Severity, Status

SEVERITIES = [s.name for s in Severity]
STATUSES = [s.name for s in Status]
CATEGORICAL = ("cluster", "name", "title", "status", "severity", "target", "target_type", "node", "source")


class FrameBuilder:
    """Rows into a DataFrame column by column (a million records stay well under a gigabyte)."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {c: [] for c in ("cluster", *COLUMNS)}

    def add(self, row: dict[str, Any], cluster: str) -> None:
        self.columns["cluster"].append(cluster)
        for column in COLUMNS:
            self.columns[column].append(row[column])

    def extend(self, rows: Iterable[dict[str, Any]], cluster: str) -> None:
        for row in rows:
            self.add(row, cluster)

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.columns)
        for column in CATEGORICAL:
            df[column] = df[column].astype("category")
        df["status"] = df["status"].cat.set_categories(STATUSES)
        df["severity"] = df["severity"].cat.set_categories(SEVERITIES)
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
        return df


def _failed(df: pd.DataFrame) -> pd.Series:
    return df["status"] != Status.SUCCESS.name


def blocking_checks(df: pd.DataFrame) -> list[str]:
    """The names of the Critical checks that failed (what blocks the solution upgrade)."""
    if df.empty:
        return []
    failed = df[_failed(df) & (df["severity"] == "CRITICAL")]
    return sorted(set(failed["name"]))


def decide(df: pd.DataFrame) -> pd.DataFrame:
    """Per cluster: blocked (a Critical check failed), the blocking and the advised checks, ready."""
    failed = df[_failed(df)]
    blocking = failed[failed["severity"] == "CRITICAL"].groupby("cluster", observed=True)["name"].nunique()
    advised = failed[failed["severity"] == "WARNING"].groupby("cluster", observed=True)["name"].nunique()
    clusters = pd.Index(df["cluster"].cat.categories if hasattr(df["cluster"], "cat") else df["cluster"].unique(),
                        name="cluster")
    out = pd.DataFrame(index=clusters)
    out["blocking_checks"] = blocking.reindex(clusters, fill_value=0).astype(int)
    out["advised_checks"] = advised.reindex(clusters, fill_value=0).astype(int)
    out["checks"] = df.groupby("cluster", observed=True)["name"].nunique().reindex(clusters, fill_value=0)
    out["ready"] = out["blocking_checks"] == 0
    return out


def cluster_table(df: pd.DataFrame) -> pd.DataFrame:
    """Checks by severity and status, per cluster: how many records in each cell."""
    table = df.groupby(["cluster", "severity", "status"], observed=True).size().unstack("status", fill_value=0)
    return table.reindex(columns=[s for s in STATUSES if s in table.columns], fill_value=0)


def nodes_by_check(df: pd.DataFrame, cluster: str) -> pd.DataFrame:
    """One cluster: a row per check, a column per node (or AllNodes), the worst status in each cell."""
    one = df[df["cluster"] == cluster]
    rank = one["status"].cat.codes  # SUCCESS < FAILURE < WARNING < ERROR: any non-success is worse than success
    worst = one.assign(rank=rank).sort_values("rank").groupby(["title", "node"], observed=True)["status"].last()
    grid = worst.astype(str).unstack("node")
    return grid.fillna("")


def failures(df: pd.DataFrame) -> pd.DataFrame:
    """Every check that did not succeed, blocking ones first: what an operator has to fix."""
    failed = df[_failed(df)]
    order = failed["severity"].map({"CRITICAL": 0, "WARNING": 1, "INFORMATIONAL": 2, "HIDDEN": 3}).astype(int)
    cols = ["cluster", "severity", "status", "name", "title", "node", "detail", "remediation", "source"]
    return failed.assign(order=order).sort_values(["order", "cluster", "name", "node"])[cols].reset_index(drop=True)


def fleet(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clusters: ready or not, with counts) and (checks: how many clusters each one blocks), most blocking first."""
    decision = decide(df)
    failed = df[_failed(df) & (df["severity"] == "CRITICAL")]
    blocking = (failed.groupby(["name", "title"], observed=True)["cluster"].nunique()
                .rename("clusters_blocked").sort_values(ascending=False).reset_index())
    return decision.sort_values(["ready", "blocking_checks"]), blocking


def exit_code(df: pd.DataFrame) -> int:
    """0 when nothing blocks, 1 when a Critical check fails."""
    return 0 if decide(df)["ready"].all() else 1
