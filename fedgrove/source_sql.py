"""Reading a site's table from a SQL query, against the database whose SQLAlchemy URL is in an environment
variable the source names.

Part of `fedgrove.sources` (which explains the two messages of a `SourceError`). The URL may hold a password:
it is in neither message, and `detail` shows it masked. The query runs in a transaction that is rolled back,
read-only where the database enforces it (PostgreSQL, SQLite).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import sqlalchemy
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from fedgrove.sources import SqlQuery, source_error

URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/database"


def read_sql(sql: SqlQuery, *, setting: str) -> pd.DataFrame:
    url = _database_url(sql.url_env)
    masked = url.render_as_string(hide_password=True)
    try:
        engine = sqlalchemy.create_engine(url)
    except (NoSuchModuleError, ImportError) as exc:
        expected = f"expected a database driver installed for the URL in {sql.url_env}"
        fix = (
            "fix: install the driver in the site's environment, "
            "e.g. pip install 'fedgrove[postgres]' for postgresql+psycopg"
        )
        raise source_error(
            f"{expected}, got none for its dialect ({fix})",
            f"{expected}, got none for {url.drivername!r}: {exc} ({fix})",
        ) from None
    try:
        try:
            connection = _connect_read_only(engine, url)
        except (SQLAlchemyError, OSError) as exc:
            expected = f"expected a database to accept a connection at the URL in {sql.url_env}"
            fix = (
                f"fix: check the host, port, database, user and password in {sql.url_env}, "
                "and that the database server runs"
            )
            raise source_error(
                f"{expected}, got a connection error ({fix})",
                f"{expected} ({masked}), got {_cause(exc, url)} ({fix})",
            ) from None
        with connection:  # closing rolls the transaction back
            return pd.read_sql_query(sqlalchemy.text(sql.query), connection)
    except (SQLAlchemyError, pd.errors.DatabaseError) as exc:  # pandas wraps execution errors in its own
        fix = "fix: check the query's table and column names against the database, and the user's right to read them"
        raise source_error(
            f"expected the SQL query in {setting} to run on the database in {sql.url_env}, "
            f"got a database error ({fix})",
            f"expected the query {sql.query!r} to run on {masked}, got {_cause(exc, url)} ({fix})",
        ) from None
    finally:
        engine.dispose()


def _database_url(variable: str) -> URL:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        raise source_error(
            f"expected a database URL in the environment variable {variable}, got "
            f"{'it unset' if raw is None else 'an empty value'} "
            f"(fix: set {variable} in the site's environment to a SQLAlchemy URL, e.g. {URL_EXAMPLE})"
        )
    try:
        return make_url(raw.strip())
    except (ArgumentError, ValueError):  # their messages may quote the URL, password included: dropped
        raise source_error(
            f"expected a SQLAlchemy URL like {URL_EXAMPLE} in {variable}, got a value that does not parse as one "
            f"(fix: correct {variable} in the site's environment; percent-encode special characters in the password)"
        ) from None


def _connect_read_only(engine: sqlalchemy.Engine, url: URL) -> Connection:
    """A connection whose transaction cannot write where the database enforces that (PostgreSQL, SQLite)."""
    backend, database = url.get_backend_name(), url.database or ""
    if backend == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        if not Path(database).is_file():  # connecting would create an empty database there
            raise FileNotFoundError(f"no SQLite database file at {Path(database).resolve()}")
    connection = engine.connect()
    try:
        if backend == "postgresql":
            connection.execution_options(postgresql_readonly=True)
        elif backend == "sqlite":
            connection.exec_driver_sql("PRAGMA query_only = ON")
    except BaseException:
        connection.close()
        raise
    return connection


def _cause(exc: BaseException, url: URL) -> str:
    """The driver's own words (not SQLAlchemy's echo of the statement and its parameters), password masked."""
    root: BaseException = exc
    while not isinstance(root, DBAPIError) and root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, DBAPIError) and root.orig is not None:
        root = root.orig
    text = f"{type(root).__name__}: {str(root).strip()}"
    return text.replace(url.password, "***") if url.password else text
