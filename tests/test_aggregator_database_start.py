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


def test_an_unreachable_postgresql_url_stops_the_server_with_one_line_naming_host_and_port(tmp_path: Path) -> None:
    closed = free_loopback_port()  # nothing listens there
    env = environment_without_fedgrove_settings()
    env["FEDGROVE_DATABASE_URL"] = f"postgresql+psycopg://fedgrove:{PASSWORD}@127.0.0.1:{closed}/fedgrove"
    command = [sys.executable, "-m", "aggregator", "--port", str(free_loopback_port()), "--data-dir",
               str(tmp_path / "data")]

    ended = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    output = ended.stdout + ended.stderr
    assert ended.returncode == 2, output
    lines = output.splitlines()
    assert len(lines) == 1 and (line := LOG_LINE.fullmatch(lines[0])), output
    assert line["message"] == (
        f"expected a database server answering at 127.0.0.1:{closed} (FEDGROVE_DATABASE_URL), got: Connection "
        "refused (fix: check that the database server is running there and that FEDGROVE_DATABASE_URL names its "
        "host, port, user and database)"
    )
    assert PASSWORD not in output


@on_both_databases
def test_a_database_a_newer_fedgrove_upgraded_is_refused_naming_both_revisions(
    database_url: str | None, tmp_path: Path
) -> None:
    data_dir = tmp_path / "aggregator"
    url = make_url(sqlite_url_or(database_url, data_dir))
    if url.host:  # PostgreSQL: the test cluster trusts loopback, so a password is taken and ignored
        url = url.set(password=PASSWORD)
    engine = make_engine(url.render_as_string(hide_password=False))  # at the newest revision
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE aggregator_schema_version SET version_num = '0003'"))
    finally:
        engine.dispose()
    settings = AggregatorSettings(data_dir=data_dir, port=0, database_url=url.render_as_string(hide_password=False),
                                  _env_file=None)

    with pytest.raises(SchemaNewerThanCode) as refused:
        ServerThread(settings)

    shown = (f"{url.drivername}://{url.username}:***@{url.host}:{url.port}/{url.database}" if url.host
             else f"sqlite:///{url.database}")
    assert str(refused.value) == (
        f"expected the database's schema at revision 0002 or older (the newest this fedgrove, {VERSION}, knows), "
        f"got revision 0003 in {shown}: a newer fedgrove has upgraded it (fix: run that newer fedgrove, or restore "
        "the database from a backup taken before the upgrade)"
    )
    assert PASSWORD not in str(refused.value)
