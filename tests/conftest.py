"""Shared fixtures: a Prefect test server for the session, a private HCI_UPGRADE_HOME, and `run_upgrade`, which
starts a simulated cluster behind fake WinRM endpoints and runs the real flow against it through pypsrp."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("PREFECT_HOME"):  # each worker its own Prefect home
    os.environ["PREFECT_HOME"] = os.path.join(os.environ["PREFECT_HOME"], os.environ["PYTEST_XDIST_WORKER"])
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")  # the run's story reaches Prefect's API, as in the CLI
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


@pytest.fixture(scope="session", autouse=True)
def hci_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hci-home")
    os.environ["HCI_UPGRADE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One throwaway PostgreSQL server for the session (tests make databases of their own on it)."""
    from tests.services import postgres

    with postgres() as url:
        yield url


@pytest.fixture(scope="module")
def pg():
    """A PostgreSQL server of the module's own, for the tests that stop and restart it under a run."""
    from tests.services import Postgres

    server = Postgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def server_on(pg, tmp_path, request):
    """A Prefect server of the test's own on the module's PostgreSQL (leases on disk), and a records database."""
    import hashlib

    from tests.services import PrefectServer, create_database

    name = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    server = PrefectServer(tmp_path / "prefect-server", create_database(pg.url, f"prefect_{name}"))
    server.start()
    yield server, create_database(pg.url, f"records_{name}")
    server.stop()


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass
class UpgradeRun:
    outcome: dict[str, Any]
    events: list[dict[str, Any]]
    scenario: Any
    state: Any
    record: str  # the run's events as the store keeps them, one JSON object a line

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.outcome["nodes"] if n["node"] == name)

    def touched(self, name: str) -> bool:
        """Whether the orchestrator changed anything on the node (pause, restart, install, resume)."""
        return any(e["node"] == name and e["kind"] in ("suspend", "restart", "install", "resume", "task_registered")
                   for e in self.events)


@pytest.fixture
def run_upgrade(prefect_server, tmp_path: Path):
    from flows.rolling_upgrade import rolling_upgrade
    from hciupgrade.models import RunOptions
    from hciupgrade.records import new_run_id
    from hciupgrade.sim.audit import check_invariants
    from hciupgrade.sim.harness import SIM_USER, SimHarness

    def run(scenario, *, check: bool = True, **options: Any) -> UpgradeRun:
        scenario = quick(scenario)
        # the product's gate timeout (30 cluster minutes) is 0.36 s of wall time at 5000x: less, and one slow
        # WinRM round trip on a loaded machine outlasts a repair the gate should have waited for
        defaults = {"poll_seconds": 10, "retry_delay_seconds": 0.05, "task_retries": 1, "gate_timeout_minutes": 30,
                    "target_build": scenario.cluster.target_build}
        opts = RunOptions(**{**defaults, **options})
        run_id = new_run_id()
        with SimHarness(scenario) as harness:
            inventory = tmp_path / f"{run_id}.yaml"
            harness.inventory().write(inventory)
            os.environ.update(harness.environment())
            state = rolling_upgrade(inventory=str(inventory), options=opts, run_id=run_id, return_state=True)
            events = harness.events()
            password = harness.password
        record = record_text(run_id)
        final = [json.loads(line) for line in record.splitlines()]
        outcome = next(e["outcome"] for e in reversed(final) if e["phase"] == "run" and "outcome" in e)
        result = UpgradeRun(outcome, events, scenario, state, record)
        # invariant 6: the credential reaches neither the record nor the outcome nor the flow run's error
        assert password not in record and password not in str(state.message)
        if check:
            assert check_invariants(events, scenario, outcome, SIM_USER) == []
        return result

    return run


def record_text(run_id: str) -> str:
    """A run's events as the record store keeps them, one JSON object a line."""
    from hciupgrade.records.store import open_store

    return "".join(json.dumps({k: v for k, v in e.items() if k != "_id"}) + "\n"
                   for e in open_store().events(run_ids=[run_id]))


CLI = [sys.executable, "-c", "from cli.app import app; app()"]


def quick(scenario: Any) -> Any:
    """A scenario with the default (realistic) durations made shorter where the tests only need the order of
    things: no spread of setup's duration across nodes, a 10-minute feature-update restart."""
    from hciupgrade.sim.scenario import Durations

    if scenario.durations != Durations():
        return scenario  # the test chose its durations
    return scenario.model_copy(update={"durations": Durations(install_spread_minutes=0,
                                                              feature_update_restart_minutes=10)})


@contextmanager
def serve_cluster(scenario: Any, tmp_path: Path, env_extra: dict[str, str]) -> Iterator[tuple[Path, dict, Path]]:
    """`hci-upgrade sim serve` in its own process, as a real cluster outlives the orchestrator; yields the
    inventory it wrote, the environment for the orchestrator's processes and its live event log."""
    import signal
    import subprocess
    import time

    import yaml

    from hciupgrade.sim.harness import PASSWORD_ENV

    scenario_file, inventory, events = tmp_path / "s.yaml", tmp_path / "inv.yaml", tmp_path / "ev.jsonl"
    scenario_file.write_text(yaml.safe_dump(quick(scenario).model_dump(mode="json")))
    env = {**os.environ, PASSWORD_ENV: "sim-secret-for-tests", "HCI_UPGRADE_HOME": str(tmp_path / "home"),
           **env_extra}
    env.pop("PREFECT_API_URL", None)  # the orchestrator runs Prefect in embedded mode, as on a laptop
    serve = subprocess.Popen([*CLI, "sim", "serve", "--scenario", str(scenario_file), "--inventory-out",
                              str(inventory), "--events", str(events)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not inventory.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield inventory, env, events
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=10)
