"""A real PostgreSQL 15 cluster on loopback for the tests, started and removed by the test session itself.

Loaded as a pytest plugin (`pytest_plugins = [..., "tests.postgres_server"]` in conftest.py). SQLite is
not PostgreSQL: its types, its transactions and its error messages differ, so code that will meet
PostgreSQL at a site (or behind the aggregator) is tested against the real server, not a stand-in.

* `postgres_server` (session): `initdb` into a fresh temporary folder, then `pg_ctl start` on a free
  loopback port; at the end `pg_ctl stop` and the folder is removed, whether the tests passed or not.
  It yields a `PostgresServer`: `.url` (SQLAlchemy, `postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`),
  `.port`, and `create_database()` / `drop_database()` for a database of a test's own.
* `postgres_database` (function): a fresh, empty database for one test, dropped afterwards.

How the cluster is run:
* binaries: Debian's `/usr/lib/postgresql/15/bin`, or the folder in `$FEDGROVE_POSTGRES_BIN`;
* `initdb` (and the server) refuse to run as root: as root both run as the `postgres` system user
  (`runuser -u postgres --`) on a folder that user owns; otherwise as the current user. Either way the
  superuser is named `postgres` (`initdb -U postgres`) and loopback connections need no password
  (`-A trust`), so the URL is the same everywhere;
* the folder is a short `mkdtemp` under the system temp dir, not pytest's `tmp_path`: the `postgres` user
  cannot enter root's 0700 pytest folders, and a Unix socket path must stay under ~107 bytes;
* durability is off (`fsync`, `synchronous_commit`, `full_page_writes`): it is a throwaway test cluster,
  and a test that needs crash-safety must start a server of its own.

The server is started by `pg_ctl`, which detaches it: if the test process is killed (SIGKILL), the
`postgres` processes and their folder stay behind (`pg_ctl -D /tmp/fedgrove-pg-*/data stop` ends them).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedgrove_common.child_process import free_loopback_port

logger = logging.getLogger(__name__)

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
BIN_DIR_VARIABLE = "FEDGROVE_POSTGRES_BIN"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
DRIVER = "postgresql+psycopg"
OS_USER_WHEN_ROOT = "postgres"
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it
COMMAND_TIMEOUT_S = 120.0
_PORT_TAKEN = ("could not bind", "Address already in use", "could not create any TCP/IP sockets")


@dataclass(frozen=True)
class PostgresDatabase:
    """One database of the test cluster: its name and its SQLAlchemy URL."""

    name: str
    url: str


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster: superuser `postgres`, no password, TCP on `127.0.0.1:port`."""

    port: int
    root: Path  # holds data/, socket/ and postgres.log
    host: str = HOST
    user: str = SUPERUSER

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the `postgres` database (shared by the whole session: prefer your own)."""
        return self.database_url("postgres")

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def database_url(self, database: str) -> str:
        return f"{DRIVER}://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> PostgresDatabase:
        """Create an empty database (named `test_<random>` unless `name` is given) and return it."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        self._run_sql("CREATE DATABASE {}", name)
        return PostgresDatabase(name=name, url=self.database_url(name))

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection a test left open to it."""
        self._run_sql("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    def _run_sql(self, statement: str, identifier: str) -> None:
        """Run `statement` with its one `{}` filled by `identifier`, quoted, outside a transaction."""
        try:
            import psycopg
            from psycopg import sql
        except ImportError:  # pragma: no cover - the test extra installs it
            pytest.fail("expected the psycopg driver for PostgreSQL tests, got none (fix: pip install -e '.[test]')")
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(sql.SQL(statement).format(sql.Identifier(identifier)))


def postgres_bin_dir() -> Path:
    """The folder holding `initdb` and `pg_ctl`: `$FEDGROVE_POSTGRES_BIN`, else Debian's PostgreSQL 15."""
    folder = Path(os.environ.get(BIN_DIR_VARIABLE) or DEFAULT_BIN_DIR)
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (folder / name).is_file()]
    if missing:
        pytest.fail(
            f"expected PostgreSQL server binaries ({', '.join(missing)}) in {folder}, got none "
            f"(fix: apt-get install postgresql-15, or set {BIN_DIR_VARIABLE} to the folder that holds them)"
        )
    return folder


def _as_server_user(command: list[str]) -> list[str]:
    """`command` as the user the server may run as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail(
            "expected `runuser` to run initdb as the postgres user (root may not), got none (fix: install util-linux)"
        )
    return [runuser, "-u", OS_USER_WHEN_ROOT, "--", *command]


def _make_root() -> Path:
    """An empty temp folder, with an empty `socket/` in it, that the server's user owns and can reach."""
    root = Path(tempfile.mkdtemp(prefix="fedgrove-pg-"))
    (root / "socket").mkdir()
    if os.geteuid() == 0:
        try:
            for folder in (root, root / "socket"):
                shutil.chown(folder, user=OS_USER_WHEN_ROOT, group=OS_USER_WHEN_ROOT)
        except LookupError:
            shutil.rmtree(root)
            pytest.fail(
                f"expected a {OS_USER_WHEN_ROOT!r} system user to run PostgreSQL as (it refuses root), got none "
                f"(fix: apt-get install postgresql-15, which creates it, or run the tests as another user)"
            )
    return root


def _run(command: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        _as_server_user(command),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        logger.info("%s exited with %d: %s%s", what, result.returncode, result.stdout, result.stderr)
    return result


def _start(bin_dir: Path, root: Path) -> int:
    """`pg_ctl start` on a free port (retried when another process takes it first); returns the port."""
    data, sockets = root / "data", root / "socket"
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_loopback_port()
        options = (
            f"-p {port} -k {sockets} -c listen_addresses={HOST} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = root / "postgres.log"
        command = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", options, "start"]
        result = _run(command, what="pg_ctl start")
        if result.returncode == 0:
            return port
        server_log = log.read_text(errors="replace") if log.is_file() else ""
        if attempt < START_ATTEMPTS and any(sign in server_log for sign in _PORT_TAKEN):
            continue
        pytest.fail(
            f"expected PostgreSQL to start on {HOST}:{port}, got pg_ctl exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}\n--- {log} ---\n{server_log}"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _stop(bin_dir: Path, root: Path) -> None:
    data = root / "data"
    if not (data / "postmaster.pid").exists():
        return
    result = _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], what="pg_ctl stop")
    if result.returncode != 0:
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], what="pg_ctl stop immediate")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    root = _make_root()
    try:
        initdb = [
            str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        result = _run(initdb, what="initdb")
        if result.returncode != 0:
            pytest.fail(
                f"expected initdb to create a cluster in {root / 'data'}, got exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        port = _start(bin_dir, root)
        logger.info("PostgreSQL on %s:%d, cluster in %s", HOST, port, root)
        try:
            yield PostgresServer(port=port, root=root)
        finally:
            _stop(bin_dir, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """An empty database of this test's own on the session's cluster, dropped when the test ends."""
    database = postgres_server.create_database()
    try:
        yield database
    finally:
        postgres_server.drop_database(database.name)
