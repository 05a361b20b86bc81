"""A database the server cannot use stops it at start with one line that says why and what to do: a
PostgreSQL server that does not answer, or a schema a newer fedgrove has upgraded. Never a traceback, never
the password."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from aggregator.config import AggregatorSettings
from aggregator.database_errors import SchemaNewerThanCode
from aggregator.db import make_engine
from aggregator.process import environment_without_fedgrove_settings
from aggregator.server import ServerThread
from fedgrove_common.child_process import free_loopback_port
from tests.database_backends import on_both_databases
from tests.schema_helpers import sqlite_url_or

PASSWORD = "never-shown-9f2c"
VERSION = importlib.metadata.version("fedgrove")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR aggregator: not started: (?P<message>.*)")


PYTHON_M_AGGREGATOR = [sys.executable, "-m", "aggregator"]
FEDGROVE_AGGREGATOR_SERVE = [sys.executable, "-m", "fedgrove_cli", "aggregator", "serve"]


def _refused_start(
    tmp_path: Path, data_dir: Path, database_url: str | None, server: list[str] = PYTHON_M_AGGREGATOR
) -> tuple[str, str]:
    """`python -m aggregator` (or `server`) on this database: it must exit 2 with one log line and nothing
    else. That line's message, and the whole output."""
    env = environment_without_fedgrove_settings()
    if database_url is not None:
        env["FEDGROVE_DATABASE_URL"] = database_url
    command = [*server, "--port", str(free_loopback_port()), "--data-dir", str(data_dir)]

    ended = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    output = ended.stdout + ended.stderr
    assert ended.returncode == 2, output
    lines = output.splitlines()
    assert len(lines) == 1 and (line := LOG_LINE.fullmatch(lines[0])), output
    return line["message"], output


@pytest.mark.parametrize("server", [PYTHON_M_AGGREGATOR, FEDGROVE_AGGREGATOR_SERVE],
                         ids=["python-m-aggregator", "fedgrove-aggregator-serve"])
def test_an_unreachable_postgresql_url_stops_the_server_with_one_line_naming_host_and_port(
    tmp_path: Path, server: list[str]
) -> None:
    closed = free_loopback_port()  # nothing listens there
    url = f"postgresql+psycopg://fedgrove:{PASSWORD}@127.0.0.1:{closed}/fedgrove"

    message, output = _refused_start(tmp_path, tmp_path / "data", url, server)

    assert message == (
        f"expected a database server answering at 127.0.0.1:{closed} (FEDGROVE_DATABASE_URL), got: Connection "
        "refused (fix: check that the database server is running there and that FEDGROVE_DATABASE_URL names its "
        "host, port, user and database)"
    )
    assert PASSWORD not in output


def _newer_schema(url: str) -> None:
    """The database as a fedgrove one revision past this code's newest would leave it."""
    engine = make_engine(url)  # at the newest revision
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE aggregator_schema_version SET version_num = '0003'"))
    finally:
        engine.dispose()


def _refusal(shown: str) -> str:
    return (
        f"expected the database's schema at revision 0002 or older (the newest this fedgrove, {VERSION}, knows), "
        f"got revision 0003 in {shown}: a newer fedgrove has upgraded it (fix: run that newer fedgrove, or restore "
        "the database from a backup taken before the upgrade)"
    )


@on_both_databases
def test_a_database_a_newer_fedgrove_upgraded_is_refused_naming_both_revisions(
    database_url: str | None, tmp_path: Path
) -> None:
    data_dir = tmp_path / "aggregator"
    url = make_url(sqlite_url_or(database_url, data_dir))
    if url.host:  # PostgreSQL: the test cluster trusts loopback, so a password is taken and ignored
        url = url.set(password=PASSWORD)
    _newer_schema(url.render_as_string(hide_password=False))
    settings = AggregatorSettings(data_dir=data_dir, port=0, database_url=url.render_as_string(hide_password=False),
                                  _env_file=None)

    with pytest.raises(SchemaNewerThanCode) as refused:
        ServerThread(settings)

    shown = (f"{url.drivername}://{url.username}:***@{url.host}:{url.port}/{url.database}" if url.host
             else f"sqlite:///{url.database}")
    assert str(refused.value) == _refusal(shown)
    assert PASSWORD not in str(refused.value)


def test_a_newer_schema_stops_python_m_aggregator_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "aggregator"
    data_dir.mkdir(mode=0o700)  # as the server makes it, so that it logs nothing but the refusal
    url = sqlite_url_or(None, data_dir)
    _newer_schema(url)

    message, _output = _refused_start(tmp_path, data_dir, None)

    assert message == _refusal(url)
