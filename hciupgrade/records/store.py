"""Where run records live: one SQL store, SQLite in embedded mode and PostgreSQL with a Prefect server.

Every event is one row, appended in its own transaction (a run killed mid-write loses at most that event). A row
per run (`hci_runs`) carries what status and the start of a run ask for without reading events: cluster, host,
process, start, end, final status, whether it was a dry or refused run, and a heartbeat. Reads by run and by
cluster are indexed, so they cost the same after years of runs.

- `HCI_UPGRADE_RECORDS_URL` unset: SQLite at `$HCI_UPGRADE_HOME/records.sqlite` (WAL, synchronous FULL,
  concurrent processes wait on each other's writes, never corrupt them).
- `postgresql://user@host:port/db`: the store every worker reaches (the PostgreSQL the Prefect server uses, in a
  database of its own). Needs `psycopg` (the `postgres` extra).

Records written by earlier versions (one JSON Lines file per run under `$HCI_UPGRADE_HOME/records`) are imported
once when the store opens, and the files moved to `records/imported/`.

A store that drops (its PostgreSQL restarted or stopped, a network cut) never stops a run: a failed statement is
tried again on a new connection for up to HCI_UPGRADE_RECORDS_RETRY_SECONDS (10); an event that still cannot be
written waits in a local spool (`$HCI_UPGRADE_HOME/spool/<host>-<pid>.jsonl`, each line on disk before the run goes
on) and the spool is written to the store, in order and before any newer event, as soon as it answers again; a
spool its process left behind is written by the next process that opens the store. Cluster actions come first,
records follow (DESIGN.md invariant 8 and the run records section).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1"

_DDL = """
CREATE TABLE IF NOT EXISTS hci_events (
    id {serial} PRIMARY KEY,
    run_id TEXT NOT NULL,
    cluster_key TEXT NOT NULL,
    node TEXT,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    start TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS hci_events_run ON hci_events (run_id, id);
CREATE INDEX IF NOT EXISTS hci_events_cluster ON hci_events (cluster_key, phase, start);
CREATE TABLE IF NOT EXISTS hci_runs (
    run_id TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    cluster_key TEXT NOT NULL,
    host TEXT,
    pid BIGINT,
    started TEXT NOT NULL,
    ended TEXT,
    status TEXT NOT NULL,
    aside TEXT,
    heartbeat TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS hci_runs_cluster ON hci_runs (cluster_key, started);
CREATE INDEX IF NOT EXISTS hci_runs_started ON hci_runs (started);
CREATE TABLE IF NOT EXISTS hci_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hci_fences (cluster_key TEXT PRIMARY KEY, fence BIGINT NOT NULL);
"""

_UPSERT_RUN = """
INSERT INTO hci_runs (run_id, cluster, cluster_key, host, pid, started, ended, status, aside, heartbeat)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    heartbeat = excluded.heartbeat,
    host = COALESCE(excluded.host, hci_runs.host),
    pid = COALESCE(excluded.pid, hci_runs.pid),
    ended = COALESCE(excluded.ended, hci_runs.ended),
    status = CASE WHEN excluded.ended IS NULL THEN hci_runs.status ELSE excluded.status END,
    aside = COALESCE(excluded.aside, hci_runs.aside)
"""

RUN_COLUMNS = ("run_id", "cluster", "host", "pid", "started", "ended", "status", "aside", "heartbeat")
FLUSH_EVERY_SECONDS = 5.0  # a spool is offered to a store that did not answer at most this often
log = logging.getLogger("hci_upgrade.records")


class StoreUnavailable(RuntimeError):
    """The record store did not answer within the retry budget."""


def retry_seconds() -> float:
    return float(os.environ.get("HCI_UPGRADE_RECORDS_RETRY_SECONDS", "10"))


def _transient() -> tuple[type[BaseException], ...]:
    """What a store that dropped raises: SQLite's operational errors, psycopg's connection and operational ones."""
    errors: list[type[BaseException]] = [sqlite3.OperationalError]
    try:
        import psycopg

        errors += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:
        pass
    return tuple(errors)


def process_alive(pid: object) -> bool:
    """Whether a process of this machine still lives (a zombie does not count). psutil, not the process table
    read by hand nor a kill with signal 0: on Windows that sends CTRL_C_EVENT to the process it asks about."""
    import psutil

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE  # type: ignore[arg-type]
    except (psutil.Error, TypeError, ValueError):
        return False


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def host_id() -> str:
    """This machine, as the records name it: HCI_UPGRADE_HOST where hostnames are not unique (containers)."""
    return os.environ.get("HCI_UPGRADE_HOST") or socket.gethostname()


def heartbeat_seconds() -> float:
    return float(os.environ.get("HCI_UPGRADE_HEARTBEAT_SECONDS", "30"))


def home() -> Path:
    return Path(os.environ.get("HCI_UPGRADE_HOME", Path.home() / ".hci-upgrade"))


def store_url() -> str:
    return os.environ.get("HCI_UPGRADE_RECORDS_URL") or f"sqlite:///{home() / 'records.sqlite'}"


def iso(moment: datetime | str | None) -> str | None:
    """A time as the store keeps it (UTC ISO 8601, milliseconds), so text order is time order."""
    if moment is None or isinstance(moment, str) and not moment:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _aside(event: dict[str, Any]) -> str | None:
    if event.get("dry_run"):
        return "dry run"
    if event.get("refused"):
        return "refused"
    return None


@dataclass(frozen=True)
class Pruned:
    runs: int
    events: int
    kept_open: int
    archive: Path | None


class RecordStore:
    """One SQL store of run records; the dialect decides the driver, the placeholders and the key column."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._lock = threading.RLock()
        self._conn: Any = None
        self._spool_path: Path | None = None  # this process's spool, while it holds events the store has not
        self._flush_tried = 0.0
        self._retrying(self._create)

    def _create(self) -> None:
        with self._tx() as cur:
            if self.postgres:  # two workers creating the tables at once would collide
                cur.execute("SELECT pg_advisory_xact_lock(7163)")
            for statement in filter(str.strip, _DDL.format(serial="BIGSERIAL" if self.postgres else
                                                          "INTEGER").split(";")):
                cur.execute(statement)
            cur.execute(self._sql("INSERT INTO hci_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
                        ("schema_version", SCHEMA_VERSION))

    def __repr__(self) -> str:  # never the URL's password
        return f"RecordStore({'postgresql' if self.postgres else self.url})"

    # --- connection -----------------------------------------------------------------------------------------
    def _connect(self) -> None:
        if self.postgres:
            try:
                import psycopg
            except ImportError:
                raise RuntimeError("HCI_UPGRADE_RECORDS_URL is a PostgreSQL URL: install the postgres extra "
                                   "(pip install 'hci-upgrade[postgres]')") from None
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        else:
            path = Path(self.url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # each committed event is on disk
            self._conn = conn

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.postgres else text

    def _retrying(self, what: Callable[[], Any], budget: float | None = None) -> Any:
        """`what()`, tried again on a new connection while the store does not answer, for up to `budget` s."""
        deadline = time.monotonic() + (retry_seconds() if budget is None else budget)
        pause = 0.2
        while True:
            try:
                with self._lock:
                    if self._conn is None:
                        self._connect()
                    return what()
            except _transient() as e:
                self._drop()
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(f"the record store ({self!r}) does not answer: {e}".strip()) from None
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    def _drop(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - a broken connection may not close cleanly
                    pass
                self._conn = None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A write transaction. SQLite's IMMEDIATE takes the write lock at once (no deadlock between two
        processes that both read first); a PostgreSQL connection the server dropped is opened again."""
        with self._lock:
            if self._conn is None:
                self._connect()
            if self.postgres:
                if self._conn.closed:
                    self._connect()
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
                return
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def _query(self, text: str, params: Sequence[Any] = ()) -> list[tuple]:
        def read() -> list[tuple]:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(text), tuple(params))
                return list(cur.fetchall())
            finally:
                cur.close()

        return self._retrying(read)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- writing --------------------------------------------------------------------------------------------
    def append(self, event: dict[str, Any], *, host: str | None = None, pid: int | None = None) -> None:
        """One event, committed before this returns; the run's row follows it (its heartbeat, and its end)."""
        self.append_many([event], host=host, pid=pid)

    def append_many(self, events: Iterable[dict[str, Any]], *, host: str | None = None,
                    pid: int | None = None) -> None:
        """Committed to the store; or, when it does not answer within the budget, kept in this process's spool
        (on disk before this returns) to be written in order once it answers again."""
        events = list(events)
        with self._lock:
            if self._spool_path is not None and not self.flush_spool():  # the older events first, always
                self._spool(events, host, pid)
                return
            try:
                self._retrying(lambda: self._commit(events, host, pid))
            except StoreUnavailable as e:
                log.warning("%s: the run goes on; its records wait in %s until the store answers", e,
                            self._spool_file())
                self._spool(events, host, pid)

    def _commit(self, events: list[dict[str, Any]], host: str | None, pid: int | None) -> None:
        with self._tx() as cur:
            self._write(cur, *self._rows(events, host, pid))

    def _spool_file(self) -> Path:
        return home() / "spool" / f"{host_id()}-{os.getpid()}.jsonl"

    def _spool(self, events: list[dict[str, Any]], host: str | None, pid: int | None) -> None:
        path = self._spool_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            for event in events:
                fh.write(json.dumps({"event": event, "host": host, "pid": pid}, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._spool_path = path

    def flush_spool(self, path: Path | None = None, *, force: bool = False) -> bool:
        """Write a spool to the store in one transaction (this process's by default) and remove it. False when
        the store still does not answer (tried at most every FLUSH_EVERY_SECONDS unless `force`)."""
        path = path or self._spool_path
        if path is None:
            return True
        with self._lock:
            if not force and time.monotonic() - self._flush_tried < FLUSH_EVERY_SECONDS:
                return False
            self._flush_tried = time.monotonic()
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
                if path.exists() else []
            try:
                if lines:
                    self._retrying(lambda: self._commit_spooled(lines), budget=0)
            except StoreUnavailable:
                return False
            path.unlink(missing_ok=True)
            if path == self._spool_path:
                self._spool_path = None
            if lines:
                log.warning("the record store answers again: %d spooled event(s) written", len(lines))
            return True

    def settle_spool(self, timeout: float) -> Path | None:
        """Wait up to `timeout` s for this process's spool to reach the store (at a run's end); returns the spool
        still waiting, if any (the next process to open the store writes it)."""
        deadline = time.monotonic() + timeout
        while self._spool_path is not None and not self.flush_spool(force=True) and time.monotonic() < deadline:
            time.sleep(FLUSH_EVERY_SECONDS)
        return self._spool_path

    def _commit_spooled(self, lines: list[dict[str, Any]]) -> None:
        with self._tx() as cur:
            for line in lines:
                self._write(cur, *self._rows([line["event"]], line.get("host"), line.get("pid")))

    def flush_left_spools(self) -> int:
        """Write the spools that processes of this machine left behind (they died before their store answered)."""
        directory = home() / "spool"
        done = 0
        for path in sorted(directory.glob(f"{host_id()}-*.jsonl")) if directory.is_dir() else []:
            pid = path.stem.rsplit("-", 1)[-1]
            if pid != str(os.getpid()) and not process_alive(pid) and self.flush_spool(path, force=True):
                done += 1
        return done

    def _rows(self, events: Iterable[dict[str, Any]], host: str | None, pid: int | None
              ) -> tuple[list[tuple], list[tuple]]:
        rows, runs = [], []
        beat = now_iso()
        for event in events:
            start = iso(event.get("start")) or beat
            cluster = str(event.get("cluster") or "")
            rows.append((event["run_id"], cluster.lower(), event.get("node"), event["phase"], event["status"], start,
                         json.dumps(event, default=str)))
            is_run = event["phase"] == "run"
            ended = (iso(event.get("end")) or start) if is_run and event["status"] != "running" else None
            runs.append((event["run_id"], cluster, cluster.lower(), host if is_run else None,
                         pid if is_run else None, start, ended, "running" if ended is None else event["status"],
                         _aside(event) if is_run else None, beat))
        return rows, runs

    def _write(self, cur: Any, rows: list[tuple], runs: list[tuple]) -> None:
        cur.executemany(self._sql("INSERT INTO hci_events (run_id, cluster_key, node, phase, status, start, body) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)"), rows)
        cur.executemany(self._sql(_UPSERT_RUN), runs)

    def beat(self, run_ids: Sequence[str]) -> None:
        """The runs' processes are alive: what tells a run on another machine from a dead one."""
        def write() -> None:
            with self._tx() as cur:
                cur.executemany(self._sql("UPDATE hci_runs SET heartbeat = ? WHERE run_id = ? AND ended IS NULL"),
                                [(now_iso(), r) for r in run_ids])

        if run_ids:
            self._retrying(write)

    def next_fence(self, cluster: str, at_least: int = 1) -> int:
        """A fence for a run that takes the cluster's lock: greater than every one this store gave the cluster,
        and at least `at_least` (the newest the cluster's nodes hold), in one atomic statement."""
        greatest = "GREATEST" if self.postgres else "MAX"
        statement = ("INSERT INTO hci_fences (cluster_key, fence) VALUES (?, ?) ON CONFLICT (cluster_key) DO UPDATE "
                     f"SET fence = {greatest}(hci_fences.fence + 1, excluded.fence) RETURNING fence")
        def take() -> int:
            with self._tx() as cur:
                cur.execute(self._sql(statement), (cluster.lower(), max(1, at_least)))
                return int(cur.fetchone()[0])

        return self._retrying(take)

    # --- reading --------------------------------------------------------------------------------------------
    def events(self, *, run_ids: Sequence[str] | None = None, cluster: str | None = None,
               since: datetime | str | None = None, until: datetime | str | None = None,
               phases: Sequence[str] | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        """Events in the order they were written, selected by run, cluster, time of start and phase."""
        if run_ids is not None and not run_ids:
            return []
        where = _Where().add("id > ?", after_id).any_of("run_id", run_ids).any_of("phase", phases)
        if cluster is not None:
            where.add("cluster_key = ?", cluster.lower())
        where.between("start", since, until)
        rows = self._query(f"SELECT id, body FROM hci_events WHERE {where} ORDER BY id", where.params)
        return [{**json.loads(body), "_id": row_id} for row_id, body in rows]

    def runs(self, *, cluster: str | None = None, run_ids: Sequence[str] | None = None, open_only: bool = False,
             real_only: bool = False, since: datetime | str | None = None, until: datetime | str | None = None,
             newest_first: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        """Run rows (RUN_COLUMNS). `real_only` leaves out dry and refused runs; `open_only` keeps runs not ended."""
        if run_ids is not None and not run_ids:
            return []
        where = _Where().any_of("run_id", run_ids)
        if cluster is not None:
            where.add("cluster_key = ?", cluster.lower())
        if open_only:
            where.add("ended IS NULL")
        if real_only:
            where.add("aside IS NULL")
        where.between("started", since, until)
        order = "started DESC, run_id DESC" if newest_first else "started, run_id"
        text = f"SELECT {', '.join(RUN_COLUMNS)} FROM hci_runs WHERE {where} ORDER BY {order}"
        if limit is not None:
            text += f" LIMIT {int(limit)}"
        return [dict(zip(RUN_COLUMNS, row, strict=True)) for row in self._query(text, where.params)]

    def latest_run(self, cluster: str | None = None) -> dict[str, Any] | None:
        """A cluster's (or any cluster's) latest run that did something: dry and refused runs are not taken as
        the latest run unless there is no other."""
        for real in (True, False):
            found = self.runs(cluster=cluster, real_only=real, newest_first=True, limit=1)
            if found:
                return found[0]
        return None

    def clusters(self) -> list[str]:
        return [c for (c,) in self._query("SELECT DISTINCT cluster_key FROM hci_runs ORDER BY cluster_key")]

    def count_runs(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM hci_runs")[0][0])

    # --- retention ------------------------------------------------------------------------------------------
    def prune(self, before: datetime, *, keep: set[str], archive: Path | None = None) -> Pruned:
        """Delete runs that ended before `before`, except open runs and those in `keep` (runs whose pause a node
        may still carry); with `archive`, their events are first written to one Parquet file there."""
        cutoff = iso(before)
        old = self._query("SELECT run_id FROM hci_runs WHERE ended IS NOT NULL AND started < ?", [cutoff])
        kept_open = int(self._query("SELECT COUNT(*) FROM hci_runs WHERE ended IS NULL AND started < ?",
                                    [cutoff])[0][0])
        doomed = [r for (r,) in old if r not in keep]
        path = None
        if not doomed:
            return Pruned(0, 0, kept_open, None)
        events = []
        for chunk in _chunks(doomed, 500):
            events += self.events(run_ids=chunk)
        if archive is not None:
            path = _write_parquet(events, archive, cutoff or "")
        with self._tx() as cur:
            for chunk in _chunks(doomed, 500):
                marks = ", ".join("?" * len(chunk))
                cur.execute(self._sql(f"DELETE FROM hci_events WHERE run_id IN ({marks})"), chunk)
                cur.execute(self._sql(f"DELETE FROM hci_runs WHERE run_id IN ({marks})"), chunk)
        return Pruned(len(doomed), len(events), kept_open, path)

    # --- migration ------------------------------------------------------------------------------------------
    def import_jsonl(self, paths: Iterable[Path]) -> int:
        """Import record files of earlier versions, once each: the file's name is claimed in the same
        transaction as its events, so two processes importing at once import it once. A line cut short by a
        crash is left out, as those versions did. Returns the number of events imported."""
        total = 0
        for path in paths:
            events = []
            with open(path) as fh:
                for line in fh:
                    try:
                        events.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
            header = next((e for e in events if e.get("phase") == "run" and e.get("host")), {})
            pid = header.get("pid")
            rows, runs = self._rows(events, header.get("host"), pid if isinstance(pid, int) else None)
            with self._tx() as cur:
                cur.execute(self._sql("INSERT INTO hci_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
                            (f"imported:{path.name}", now_iso()))
                if cur.rowcount == 1:
                    self._write(cur, rows, runs)
                    total += len(events)
        return total


class _Where:
    """A WHERE clause and its parameters, built from what the caller selects (no text from input)."""

    def __init__(self) -> None:
        self.clauses: list[str] = ["1 = 1"]
        self.params: list[Any] = []

    def add(self, clause: str, *params: Any) -> _Where:
        self.clauses.append(clause)
        self.params += params
        return self

    def any_of(self, column: str, values: Sequence[str] | None) -> _Where:
        return self if values is None else self.add(f"{column} IN ({', '.join('?' * len(values))})", *values)

    def between(self, column: str, since: datetime | str | None, until: datetime | str | None) -> _Where:
        if since is not None:
            self.add(f"{column} >= ?", iso(since))
        if until is not None:
            self.add(f"{column} < ?", iso(until))
        return self

    def __str__(self) -> str:
        return " AND ".join(self.clauses)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _write_parquet(events: list[dict[str, Any]], directory: Path, cutoff: str) -> Path:
    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{k: v for k, v in e.items() if k != "_id"} for e in events])
    for column in frame.columns:  # nested values (outcome, options, order) as JSON text: one type per column
        if frame[column].map(lambda v: isinstance(v, (dict, list))).any():
            frame[column] = frame[column].map(lambda v: json.dumps(v, default=str) if v is not None else None)
        elif frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"records-before-{cutoff[:10]}-{stamp}.parquet"
    frame.to_parquet(path, index=False)
    return path


_stores: dict[tuple[int, str], RecordStore] = {}
_stores_lock = threading.Lock()


def open_store(url: str | None = None) -> RecordStore:
    """The store of this process for the URL (default: from the environment), opened once; opening it imports
    the JSON Lines records of earlier versions found in this home."""
    url = url or store_url()
    key = (os.getpid(), url)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = RecordStore(url)
            import_legacy(store)
            store.flush_left_spools()
    return store


def import_legacy(store: RecordStore) -> int:
    """Import and set aside the JSON Lines records of earlier versions found in this home (none: one listing)."""
    legacy = home() / "records"
    files = sorted(legacy.glob("*.jsonl")) if legacy.is_dir() else []
    if not files:
        return 0
    imported = store.import_jsonl(files)
    done = legacy / "imported"
    done.mkdir(exist_ok=True)
    for path in files:
        try:
            shutil.move(str(path), done / path.name)
        except FileNotFoundError:  # another process set it aside first
            pass
    return imported


def older_than(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)
