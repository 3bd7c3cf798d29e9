"""Real services for the tests, each a throwaway instance on a loopback port: a PostgreSQL cluster in a temporary
directory (Debian's packages; as root, run as the postgres user, which initdb requires) and a Prefect server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL if it does not end within 20 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def postgres_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")
    return versions[-1].parent


class Postgres:
    """A PostgreSQL server of its own in a temporary directory, on a loopback port; `stop` and `start` for the
    tests that take it away mid-run."""

    def __init__(self) -> None:
        self.binaries = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="hci-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        subprocess.run([*self.as_user, str(self.binaries / "initdb"), "-D", str(self.data), "-U", "hci",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        """The URL of its superuser `hci` (trust on loopback) without a database name."""
        return f"postgresql://hci@127.0.0.1:{self.port}"

    def running(self) -> bool:
        return subprocess.run([*self.as_user, str(self.binaries / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run([*self.as_user, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                        str(self.root / "log"), "-w", "-t", "60", "start"], check=True, capture_output=True)

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run([*self.as_user, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                        "stop"], capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own; yields the URL of its superuser `hci` (trust on loopback) without a
    database name: append one made with `create_database`."""
    server = Postgres()
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


def create_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"  # leases that outlive a server restart


class PrefectServer:
    """`prefect server start` on a loopback port (on PostgreSQL when given), with the cluster locks' leases on
    disk as the README's server path has it; `kill` and `start` for the tests that take it away mid-run."""

    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_API_PORT": str(self.port), "PREFECT_UI_API_URL": self.api}
        self.server_env = dict(self.env, PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=LEASE_STORAGE)
        self.server_env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        if database_url:
            self.server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url.replace("postgresql://",
                                                                                          "postgresql+asyncpg://")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                                         str(self.port)], env=self.server_env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("the Prefect server did not start")

    def kill(self) -> None:
        """SIGKILL: the server dies as a crashed machine's would, with nothing written on its way out."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@contextmanager
def prefect_server(home: Path, database_url: str | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """A Prefect server (PrefectServer) for the test's duration; yields its API URL and the environment that points
    Prefect's clients at it."""
    server = PrefectServer(home, database_url)
    server.start()
    try:
        yield server.api, server.env
    finally:
        server.stop()
