"""The record store's PostgreSQL stopped or restarted under a run: nothing is lost, nothing waits on it for long,
and the order holds. Events that cannot be written wait in the process's spool (on disk before the run goes on)
and reach the store, before any newer event, as soon as it answers again; a spool whose process died is written
by the next process that opens the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hciupgrade.records.store import RecordStore, StoreUnavailable, home, host_id
from tests.services import create_database


@pytest.fixture
def store_url(pg, request, tmp_path, monkeypatch):
    monkeypatch.setenv("HCI_UPGRADE_HOME", str(tmp_path))
    monkeypatch.setenv("HCI_UPGRADE_RECORDS_RETRY_SECONDS", "1")
    return create_database(pg.url, f"outage_{request.node.name[5:40].lower()}")


def event(i: int, phase: str = "drain") -> dict:
    return {"run_id": "run-1", "cluster": "hci-demo", "node": "node1", "phase": phase, "status": "running",
            "start": f"2026-12-07T01:00:{i:02d}.000+00:00", "n": i}


def test_events_written_while_the_store_is_down_reach_it_in_order_when_it_returns(pg, store_url):
    store = RecordStore(store_url)
    store.append(event(0, "run"), host="h", pid=1)
    pg.stop()
    try:
        started = time.monotonic()
        for i in (1, 2, 3):
            store.append(event(i), host="h", pid=1)  # never raises: the spool takes them
        assert time.monotonic() - started < 10  # the retry budget once, then the spool without waiting again
        spooled = [json.loads(line)["event"]["n"] for line in store._spool_file().read_text().splitlines()]
        assert spooled == [1, 2, 3]
        with pytest.raises(StoreUnavailable, match="does not answer"):
            store.events(run_ids=["run-1"])
    finally:
        pg.start()
    time.sleep(5.1)  # a spool is offered again at most every five seconds
    store.append(event(4), host="h", pid=1)
    assert [e["n"] for e in store.events(run_ids=["run-1"])] == [0, 1, 2, 3, 4]
    assert not store._spool_file().exists()


def test_a_restart_of_the_store_between_two_events_loses_nothing(pg, store_url):
    store = RecordStore(store_url)
    store.append(event(0, "run"), host="h", pid=1)
    pg.stop("fast")
    pg.start()  # the connection the store held is gone: the next statement opens another
    store.append(event(1), host="h", pid=1)
    assert [e["n"] for e in store.events(run_ids=["run-1"])] == [0, 1]
    assert not store._spool_file().exists()


CHILD = """
import os, sys
from hciupgrade.records.store import RecordStore
store = RecordStore(os.environ["URL"])
print("ready", flush=True)
sys.stdin.readline()  # the store is stopped now
store.append({"run_id": "run-1", "cluster": "hci-demo", "node": "node1", "phase": "drain", "status": "running",
              "start": "2026-12-07T01:00:01.000+00:00", "n": 1}, host="h", pid=os.getpid())
print(store._spool_file(), flush=True)
"""


def test_a_spool_left_by_a_process_that_ended_is_written_by_the_next_one(pg, store_url):
    RecordStore(store_url).append(event(0, "run"), host="h", pid=1)
    child = subprocess.Popen([sys.executable, "-c", CHILD], env={**os.environ, "URL": store_url},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    pg.stop()
    try:
        out, _ = child.communicate("go\n", timeout=60)
    finally:
        pg.start()
    spool = out.strip()
    assert os.path.exists(spool) and spool.startswith(str(home() / "spool" / f"{host_id()}-"))
    store = RecordStore(store_url)
    assert store.flush_left_spools() == 1  # its process is gone: the next one writes it
    assert [e["n"] for e in store.events(run_ids=["run-1"])] == [0, 1]
    assert not os.path.exists(spool)


def test_the_live_view_goes_on_while_the_records_do_not_answer(monkeypatch):
    from rich.console import Console

    import cli.render as views

    view = views.LiveView("run-1", Console(width=120, record=True))

    def down(url=None):
        raise StoreUnavailable("the record store (RecordStore(postgresql)) does not answer: connection refused")

    monkeypatch.setattr(views, "open_store", down)
    view._read()  # no exception: the view's thread lives on
    console = Console(width=120, record=True)
    console.print(view.render())
    assert "records unavailable, the run goes on" in " ".join(console.export_text().split())
