"""The record store, on SQLite (embedded mode) and on PostgreSQL (a Prefect server's): appends that survive a
killed writer, concurrent writers, reads by run and by cluster, liveness across machines, retention and the
import of earlier versions' JSON Lines records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from hciupgrade.records import RunRecorder, load_events, owned_nodes, runs_in_progress
from hciupgrade.records.store import RecordStore, import_legacy, open_store
from tests.services import create_database


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    return create_database(server, f"records_{uuid.uuid4().hex[:8]}")


def event(run_id: str, phase: str, status: str, *, cluster: str = "hci-a", node: str | None = None,
          start: str | None = None, **attrs) -> dict:
    return {"run_id": run_id, "cluster": cluster, "node": node, "phase": phase, "status": status,
            "start": start or datetime.now(UTC).isoformat(), "end": None, "error": None, "time_factor": 1, **attrs}


WRITER = """
import os, sys
from hciupgrade.records import RunRecorder
from hciupgrade.records.store import RecordStore
store = RecordStore(sys.argv[1])
recorder = RunRecorder(sys.argv[2], "hci-a", store=store)
recorder.emit(None, "run", "running")
for i in range(int(sys.argv[3])):
    recorder.emit("node1", "install", "running", i=i)
    if i == 5:
        print("ready", flush=True)
recorder.emit(None, "run", "succeeded")
"""


def writer(url: str, run_id: str, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, run_id, str(count)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_concurrent_writers_lose_nothing_and_a_killed_one_keeps_what_it_committed(store_url):
    writers = [writer(store_url, f"run-{i}", 150) for i in range(4)]
    victim = writer(store_url, "run-killed", 100_000)
    assert victim.stdout.readline().strip() == "ready"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    for w in writers:
        assert w.wait(timeout=120) == 0
    store = RecordStore(store_url)
    for i in range(4):
        events = store.events(run_ids=[f"run-{i}"])
        assert [e["i"] for e in events if e["phase"] == "install"] == list(range(150))
        assert store.runs(run_ids=[f"run-{i}"])[0]["status"] == "succeeded"
    killed = [e["i"] for e in store.events(run_ids=["run-killed"]) if e["phase"] == "install"]
    assert killed == list(range(len(killed))) and len(killed) > 5  # every committed event, in order, no hole
    row = store.runs(run_ids=["run-killed"])[0]
    assert row["ended"] is None and runs_in_progress("hci-a", store=store) == []  # its process is gone


def test_reads_select_by_run_cluster_and_time(store_url):
    store = RecordStore(store_url)
    day = datetime(2026, 1, 1, tzinfo=UTC)
    for n, cluster in enumerate(["hci-a", "hci-b", "HCI-A"]):
        start = (day + timedelta(days=n)).isoformat()
        store.append_many([event(f"r{n}", "run", "running", cluster=cluster, start=start),
                           event(f"r{n}", "drain", "succeeded", cluster=cluster, node="n1", start=start),
                           event(f"r{n}", "run", "succeeded", cluster=cluster, start=start)], host="h", pid=1)
    assert {e["run_id"] for e in store.events(cluster="hci-a")} == {"r0", "r2"}  # names compare as Windows does
    assert {e["run_id"] for e in store.events(since=day + timedelta(days=1))} == {"r1", "r2"}
    assert {e["run_id"] for e in store.events(cluster="HCI-A", until=day + timedelta(hours=1))} == {"r0"}
    assert [r["run_id"] for r in store.runs(cluster="hci-a")] == ["r0", "r2"]
    frame = load_events(cluster="hci-b", store=store)
    assert list(frame["phase"]) == ["run", "drain", "run"] and isinstance(frame["start"].dtype, pd.DatetimeTZDtype)


def test_dry_and_refused_runs_are_never_the_latest_run(store_url):
    store = RecordStore(store_url)
    store.append_many([event("real", "run", "running", start="2026-01-01T00:00:00+00:00"),
                       event("real", "run", "succeeded", start="2026-01-01T01:00:00+00:00")], host="h", pid=1)
    store.append_many([event("dry", "run", "running", dry_run=True, start="2026-01-02T00:00:00+00:00"),
                       event("dry", "run", "succeeded", dry_run=True, start="2026-01-02T00:00:00+00:00")])
    store.append_many([event("no", "run", "running", start="2026-01-03T00:00:00+00:00"),
                       event("no", "run", "failed", refused=True, start="2026-01-03T00:00:00+00:00")])
    assert store.latest_run("hci-a")["run_id"] == "real"
    assert {r["run_id"]: r["aside"] for r in store.runs()} == {"real": None, "dry": "dry run", "no": "refused"}


def test_a_run_on_another_machine_is_alive_while_its_heartbeat_is_fresh(store_url, monkeypatch):
    store = RecordStore(store_url)
    store.append(event("elsewhere", "run", "running"), host="machine-b", pid=os.getpid())
    alive = runs_in_progress("hci-a", store=store)
    assert [(r["run_id"], r["host"]) for r in alive] == [("elsewhere", "machine-b")]  # the pid means nothing here
    monkeypatch.setenv("HCI_UPGRADE_HEARTBEAT_SECONDS", "0.01")
    time.sleep(0.1)  # four beats missed: that machine's run is dead
    assert runs_in_progress("hci-a", store=store) == []


def test_the_heartbeat_keeps_a_long_step_alive(store_url, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HEARTBEAT_SECONDS", "0.2")
    store = RecordStore(store_url)
    recorder = RunRecorder("beating", "hci-a", store=store)
    recorder.emit(None, "run", "running")
    first = store.runs(run_ids=["beating"])[0]["heartbeat"]
    time.sleep(1.2)  # hours of setup without an event, shortened
    assert store.runs(run_ids=["beating"])[0]["heartbeat"] > first
    recorder.emit(None, "run", "succeeded")


def test_ownership_is_read_from_the_shared_store(store_url):
    store = RecordStore(store_url)
    store.append_many([event("a", "ownership", "paused", node="n2", mark="a"),
                       event("b", "ownership", "paused", node="n3", mark="b"),
                       event("b", "ownership", "released", node="n3"),
                       event("a", "ownership", "paused", node="n1", mark="a", cluster="hci-other")])
    assert owned_nodes("HCI-A", store=store) == {"n2": "a"}


def test_prune_archives_old_runs_to_parquet_and_keeps_what_a_run_still_needs(store_url, tmp_path):
    store = RecordStore(store_url)
    old, new = "2025-01-01T00:00:00+00:00", datetime.now(UTC).isoformat()
    for run_id in ("old-done", "old-owner"):
        store.append_many([event(run_id, "run", "running", start=old),
                           event(run_id, "drain", "succeeded", node="n1", start=old),
                           event(run_id, "run", "failed", start=old)], host="h", pid=1)
    store.append(event("old-open", "run", "running", start=old), host="h", pid=1)  # crashed: never ended
    store.append_many([event("recent", "run", "running", start=new), event("recent", "run", "succeeded", start=new)])
    pruned = store.prune(datetime.now(UTC) - timedelta(days=180), keep={"old-owner"}, archive=tmp_path / "archive")
    assert (pruned.runs, pruned.events, pruned.kept_open) == (1, 3, 1)
    assert {r["run_id"] for r in store.runs()} == {"old-owner", "old-open", "recent"}
    archived = pd.read_parquet(pruned.archive)
    assert set(archived["run_id"]) == {"old-done"} and list(archived["phase"]) == ["run", "drain", "run"]


def test_records_of_earlier_versions_are_imported_once_without_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    monkeypatch.delenv("HCI_UPGRADE_RECORDS_URL", raising=False)
    legacy = tmp_path / "records"
    legacy.mkdir()
    lines = [event("old-run", "run", "running", pid=4242, host="laptop"),
             event("old-run", "ownership", "paused", node="n2", mark="old-run"),
             event("old-run", "drain", "running", node="n2", vms=3)]
    (legacy / "old-run.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"run_id": "old-r')
    store = open_store()
    assert [e["phase"] for e in store.events(run_ids=["old-run"])] == ["run", "ownership", "drain"]
    assert store.events(run_ids=["old-run"])[2]["vms"] == 3  # every field kept
    assert store.runs(run_ids=["old-run"])[0]["host"] == "laptop"
    assert owned_nodes("hci-a", store=store) == {"n2": "old-run"}
    assert not (legacy / "old-run.jsonl").exists() and (legacy / "imported" / "old-run.jsonl").exists()
    # the same file offered again (a copy from another machine) is not imported twice
    assert store.import_jsonl([legacy / "imported" / "old-run.jsonl"]) == 0
    assert import_legacy(store) == 0 and len(store.events(run_ids=["old-run"])) == 3


def test_records_prune_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    monkeypatch.delenv("HCI_UPGRADE_RECORDS_URL", raising=False)
    store = open_store()
    store.append_many([event("ancient", "run", "running", start="2024-01-01T00:00:00+00:00"),
                       event("ancient", "run", "succeeded", start="2024-01-01T00:00:00+00:00")], host="h", pid=1)
    bad = CliRunner().invoke(app, ["records", "prune", "--older-than", "-1"])
    assert bad.exit_code == 2 and "--older-than" in bad.output
    done = CliRunner().invoke(app, ["records", "prune", "--older-than", "365", "--archive", str(tmp_path / "a")])
    assert done.exit_code == 0 and "pruned 1 runs" in done.output, done.output
    assert store.runs() == [] and list(Path(tmp_path / "a").glob("*.parquet"))
