"""A real PostgreSQL 16 with pgvector for the library tests: the ``pgserver`` wheel's binaries.

:func:`start_postgres` runs ``initdb`` and ``postgres`` from the wheel in a temporary folder of its own,
on a free loopback port (TCP, password auth: scram-sha-256 for user :data:`USER`), polls until a
login succeeds, and :meth:`PostgresServer.stop` ends it (fast shutdown). Under root (CI) PostgreSQL
refuses to run, so the server runs as the wheel's unprivileged ``pgserver`` user (created once, as the
wheel itself does). Never a server of the system's: nothing outside the temporary folder is used.

The ``postgres`` fixture is one server per test session; ``pg_url`` gives each test a fresh database
and sets ``PGPASSWORD`` for it (the URL never holds the password). Without the wheel the tests that
need it are skipped, except under ``CI=true`` where a missing server fails the run.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

USER, PASSWORD = "speechct", "pg-test-password"
RUN_AS = "pgserver"  # the pgserver wheel's own unprivileged user


def bin_dir() -> Path | None:
    try:
        with warnings.catch_warnings():  # the wheel's __init__ asks platformdirs for a runtime dir: unused here
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def missing() -> str | None:
    """Why no PostgreSQL can be started here, or None."""
    for module, package in (("psycopg", "psycopg"), ("pgvector", "pgvector")):
        try:
            __import__(module)
        except ImportError:
            return f"the {package} package is not installed (pip install 'speechct[postgres]')"
    folder = bin_dir()
    if folder is None or not (folder / "postgres").exists():
        return "the pgserver wheel (PostgreSQL with pgvector) is not installed (pip install 'speechct[postgres]')"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """subprocess arguments that drop root to the pgserver user (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.utils import ensure_user_exists

    entry = ensure_user_exists(RUN_AS)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    folder: Path
    port: int
    process: subprocess.Popen

    def url(self, database: str = "postgres", user: str = USER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), password=PASSWORD, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        name = "lib_" + uuid.uuid4().hex[:12]
        self.admin(f"CREATE DATABASE {name}")
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT: fast shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(*, timeout: float = 60.0) -> PostgresServer:
    """initdb + postgres in a new temporary folder on a free loopback port; returns once a login works."""
    import psycopg

    binaries = bin_dir()
    drop = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="speechct-pg-"))  # /tmp is traversable by the pgserver user
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if drop:
        for path in (folder, sockets, pwfile):
            os.chown(path, drop["user"], drop["group"])
    subprocess.run([str(binaries / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-sync"],
                   check=True, capture_output=True, text=True, timeout=timeout, **drop)
    port = free_port()
    log = open(folder / "postgres.log", "wb")
    process = subprocess.Popen(
        [str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(sockets),
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
         "-c", "max_connections=50", "-c", "shared_buffers=64MB"],
        stdout=log, stderr=subprocess.STDOUT, **drop)
    server = PostgresServer(folder, port, process)
    atexit.register(server.stop)  # a script that dies leaves no server behind (stop is idempotent)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(server.url(), password=PASSWORD, connect_timeout=2):
                return server
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                text = (folder / "postgres.log").read_text(errors="replace")[-2000:]
                server.stop()
                raise RuntimeError(f"PostgreSQL did not start: {text}") from None
            time.sleep(0.2)


def need_postgres() -> None:
    why = missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no PostgreSQL: {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def postgres():
    need_postgres()
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres, monkeypatch) -> str:
    """A fresh database's URL (no password in it); PGPASSWORD set for the test and its subprocesses."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    for name in ("PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGUSER", "PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    return postgres.url(postgres.create_database())
