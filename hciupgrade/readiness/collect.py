"""Run the environment checker on every node of a cluster and collect its records as rows."""

from __future__ import annotations

from typing import Any

from hciupgrade.cluster import ClusterClient
from hciupgrade.readiness.results import Problem, normalise
from hciupgrade.remote import SWITCH, Cmdlet, NodeUnreachable, RemoteError

MODULE = "AzStackHci.EnvironmentChecker"


def run_checker(client: ClusterClient, *, install_module: bool = False) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Invoke-AzStackHciUpgradeValidation -PassThru on each node; the module is installed first when missing and
    `install_module` allows it. Cluster-wide records that every node reports are kept once."""
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for node, session in client.sessions.items():
        source = f"{client.name}/{node}"
        try:
            try:
                present = session.run(Cmdlet("Get-Module", {"Name": MODULE, "ListAvailable": SWITCH})).objects
            except NodeUnreachable:  # e.g. the shell died in a restart since the last call: reconnect once
                present = session.run(Cmdlet("Get-Module", {"Name": MODULE, "ListAvailable": SWITCH})).objects
            if not present:
                if not install_module:
                    problems.append(Problem(source, f"module {MODULE} is not installed; allow its installation "
                                                    "(--install-module) or install it by hand"))
                    continue
                session.run(Cmdlet("Install-Module", {"Name": MODULE, "AllowClobber": SWITCH, "Force": SWITCH}))
            records = session.run(Cmdlet("Invoke-AzStackHciUpgradeValidation", {"PassThru": SWITCH}),
                                  timeout=1800).objects
        except RemoteError as e:
            problems.append(Problem(source, f"the checker did not run: {e}"))
            continue
        for i, raw in enumerate(records):
            try:
                row = normalise(raw, source)
            except ValueError as e:
                problems.append(Problem(f"{source} record {i}", str(e)))
                continue
            if row["node"] == "AllNodes":
                row["node"] = node  # the module ran on this node alone: its AllNodes is this node
            elif row["node"] == "Cluster":
                row["node"] = row["target"]
                if (row["name"], row["target"]) in seen:
                    continue
                seen.add((row["name"], row["target"]))
            rows.append(row)
    return rows, problems
