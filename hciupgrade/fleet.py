"""A fleet's plan: which clusters go in which wave, when each one's window opens, how long its next node should
take (from past runs), and whether that fits what is left of the window. Pure: the flow does the running."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pandas as pd

from hciupgrade.models import ClusterInventory, Inventory, WavePolicy
from hciupgrade.records.store import RecordStore, open_store


@dataclass(frozen=True)
class Wave:
    number: int
    name: str
    clusters: list[str]


def plan_waves(clusters: list[ClusterInventory], policy: WavePolicy) -> list[Wave]:
    """The canaries (clusters with the canary tags) first, then the rest in inventory order, in batches of a
    count or a percentage of the rest (at least one cluster a wave)."""
    canary = [c.name for c in clusters if policy.canary and all(c.tags.get(k) == v for k, v in policy.canary.items())]
    rest = [c.name for c in clusters if c.name not in canary]
    if isinstance(policy.batch, int):
        size = policy.batch
    else:
        size = max(1, math.ceil(len(rest) * float(policy.batch[:-1]) / 100))
    waves = [Wave(1, "canary", canary)] if canary else []
    for i in range(0, len(rest), size):
        waves.append(Wave(len(waves) + 1, f"wave {len(waves) + 1}", rest[i:i + size]))
    return waves


@dataclass(frozen=True)
class NodeEstimate:
    """A node's duration in cluster seconds: the median of past nodes and their spread (90th percentile minus
    median), from this cluster's history (3 nodes or more), the fleet's, or the documented default."""

    median_s: float
    spread_s: float
    samples: int
    source: str  # cluster, fleet, default
    staging_s: float = 0.0  # PreStage: setup's first phase on every node at once, before the first node

    @property
    def needed_s(self) -> float:
        return self.median_s + self.spread_s


def node_durations(clusters: list[str], store: RecordStore | None = None) -> pd.DataFrame:
    """One row per node that a past run upgraded: cluster, run, node, start, cluster seconds from its first step
    to its end, whether the run had staged it (PreStage: setup's first phase is then outside the node's time)
    and how long its staging took (read through the store's index by cluster)."""
    store = store or open_store()
    rows = []
    for cluster in clusters:
        started: dict[tuple[str, str], tuple[str, float]] = {}
        staged: dict[tuple[str, str], float] = {}
        for e in store.events(cluster=cluster, phases=["node", "stage"]):
            key = (e["run_id"], e["node"])
            if e["phase"] == "stage":
                if e["status"] == "succeeded" and e.get("start") and e.get("end"):
                    took = datetime.fromisoformat(e["end"]) - datetime.fromisoformat(e["start"])
                    staged[key] = took.total_seconds() * float(e.get("time_factor") or 1)
                continue
            if e["status"] == "running":
                started[key] = (e["start"], float(e.get("time_factor") or 1))
            elif e.get("result") in ("upgraded", "restarted") and key in started:
                begin, factor = started.pop(key)
                wall = (datetime.fromisoformat(e["start"]) - datetime.fromisoformat(begin)).total_seconds()
                rows.append({"cluster": cluster, "run_id": e["run_id"], "node": e["node"], "start": begin,
                             "cluster_s": wall * factor, "staged": key in staged, "stage_s": staged.get(key)})
    return pd.DataFrame(rows, columns=["cluster", "run_id", "node", "start", "cluster_s", "staged", "stage_s"])


def _estimate(samples: list[float], source: str) -> NodeEstimate:
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1] if len(samples) >= 2 else median
    return NodeEstimate(median, max(0.0, p90 - median), len(samples), source)


def estimates(clusters: list[str], policy: WavePolicy, history: pd.DataFrame,
              staged: bool = False) -> dict[str, NodeEstimate]:
    """Each cluster's node estimate: its own history with 3 nodes or more, else the fleet's, else the default
    (policy.default_node_minutes, a quarter of it as spread). A run with PreStage learns from staged runs (a
    node's time is then its out-of-service time, its staging estimated apart) while there are enough of them."""
    if staged and history["staged"].astype(bool).sum() >= 3:
        history = history[history["staged"].astype(bool)]
    fleet = list(history["cluster_s"])
    default = NodeEstimate(policy.default_node_minutes * 60, policy.default_node_minutes * 15, 0, "default")
    result = {}
    for cluster in clusters:
        mine = history.loc[history["cluster"] == cluster]
        own = list(mine["cluster_s"])
        guess = _estimate(own, "cluster") if len(own) >= 3 else \
            _estimate(fleet, "fleet") if len(fleet) >= 3 else default
        if staged:
            stages = [float(v) for v in (mine if len(own) >= 3 else history)["stage_s"].dropna()]
            guess = replace(guess, staging_s=max(stages) if stages else policy.default_stage_minutes * 60)
        result[cluster] = guess
    return result


def predicted_vs_actual(history: pd.DataFrame, policy: WavePolicy) -> pd.DataFrame:
    """Each past node with what window-fit would have predicted for it from the nodes before it (same rules:
    its cluster's history, else the fleet's, else the default) beside what it took: cluster, run_id, node,
    predicted_s (median + spread), actual_s, source."""
    rows = []
    ordered = history.sort_values("start").reset_index(drop=True)
    for i, row in ordered.iterrows():
        before = ordered.iloc[:i]
        guess = estimates([row["cluster"]], policy, before)[row["cluster"]]
        rows.append({"cluster": row["cluster"], "run_id": row["run_id"], "node": row["node"],
                     "predicted_s": guess.needed_s, "actual_s": row["cluster_s"], "source": guess.source})
    return pd.DataFrame(rows, columns=["cluster", "run_id", "node", "predicted_s", "actual_s", "source"])


@dataclass(frozen=True)
class WindowFit:
    cluster: str
    window: str  # described, or "always"
    opens: datetime | None
    closes: datetime | None
    open_now: bool
    remaining_s: float | None  # wall seconds left in the window open now (None: no window)
    estimate: NodeEstimate
    margin_s: float
    time_factor: float

    @property
    def fits(self) -> bool:
        """Whether the next node fits what is left of the window (in cluster time) with the margin."""
        if self.remaining_s is None:
            return True
        return self.open_now and self.remaining_s * self.time_factor >= \
            self.estimate.staging_s + self.estimate.needed_s + self.margin_s


def window_fit(inventory: Inventory, cluster: ClusterInventory, estimate: NodeEstimate,
               now: datetime | None = None) -> WindowFit:
    now = now or datetime.now(UTC)
    window = inventory.window_for(cluster)
    margin = inventory.waves.margin_minutes * 60
    if window is None:
        return WindowFit(cluster.name, "always", None, None, True, None, estimate, margin, cluster.time_factor)
    opens, closes = window.current_or_next(now)
    open_now = opens <= now
    remaining = (closes - now).total_seconds() if open_now else 0.0
    return WindowFit(cluster.name, window.describe(), opens, closes, open_now, remaining, estimate, margin,
                     cluster.time_factor)


def fleet_plan(inventory: Inventory, tags: list[str] | None = None, now: datetime | None = None,
               store: RecordStore | None = None, names: list[str] | None = None, staged: bool = False
               ) -> tuple[list[Wave], dict[str, WindowFit]]:
    """The waves of the selected clusters, and each one's window and fit (`staged`: the runs use PreStage, so the
    first node needs the staging too)."""
    clusters = inventory.select(tags, names)
    names = [c.name for c in clusters]
    history = node_durations(sorted({c.name.lower() for c in inventory.clusters}), store)
    guess = estimates([n.lower() for n in names], inventory.waves, history, staged)
    fits = {c.name: window_fit(inventory, c, guess[c.name.lower()], now) for c in clusters}
    return plan_waves(clusters, inventory.waves), fits


def until_open(fit: WindowFit, now: datetime | None = None) -> timedelta:
    now = now or datetime.now(UTC)
    if fit.open_now or fit.opens is None:
        return timedelta(0)
    return fit.opens - now
