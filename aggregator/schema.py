"""Brings the server's database to the schema this code knows, at start-up, one server at a time.

Why this module exists: an upgrade of fedgrove must never need a hand-made schema change. The schema's
history is a line of Alembic revisions in `aggregator/migrations/versions/` (0001, 0002, ...); the database
records the one it is at in the table `aggregator_schema_version`, and every start runs those it lacks:

* no version recorded: a new, empty database, or one that fedgrove created before its schema was versioned
  (`create_all` and hand-added columns); revision 0001, the baseline, creates what such a database lacks and
  takes what it has as it is, so both go through the same line of revisions;
* an older revision: the newer revisions are run, in one transaction;
* a revision this code does not know: a newer fedgrove upgraded the database, and this one refuses to start
  (`SchemaNewerThanCode`): it would misread the newer schema, and it cannot take the upgrade back.

Two servers starting together must not both upgrade: the version is read and the revisions run under a lock
that the second waits for, and then it finds the schema at the head. On PostgreSQL it is a transaction-level
advisory lock (`pg_advisory_xact_lock`, released by the commit); on SQLite the database's own write lock,
taken at once by `BEGIN IMMEDIATE`. PostgreSQL and SQLite both roll back DDL with the transaction, so an
upgrade that fails half-way leaves the schema as it was.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from aggregator.database_errors import DatabaseUnreachable, SchemaNewerThanCode, driver_reason

logger = logging.getLogger(__name__)


class _WithoutAlembicPreamble(logging.Filter):
    """Alembic logs which implementation and DDL mode it uses each time it reads the version, at every start;
    `upgrade_schema` logs one line of its own when it upgrades."""

    PREAMBLE = ("Context impl %s.", "Will assume %s DDL.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.PREAMBLE


logging.getLogger("alembic.runtime.migration").addFilter(_WithoutAlembicPreamble())

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "aggregator_schema_version"
# pg_advisory_xact_lock's key: the bytes of "fedgrove" as a (positive) signed 64-bit integer.
LOCK_KEY = int.from_bytes(b"fedgrove", "big")
HEAD = "head"


def migrations_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the aggregator's revisions, without an alembic.ini; `migrations/env.py`
    runs them on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["applied"] = []
    return config


def known_revisions() -> list[str]:
    """This code's revisions, oldest first."""
    script = ScriptDirectory.from_config(migrations_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def migration_context(connection: Connection) -> MigrationContext:
    """Alembic's view of the database on `connection`: its version table is the aggregator's."""
    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})


def current_revision(connection: Connection) -> str | None:
    """The revision the database records, None when it records none."""
    return migration_context(connection).get_current_revision()


def upgrade_schema(engine: Engine, revision: str = HEAD) -> list[str]:
    """Upgrade the database to `revision` (the newest by default) under the start-up lock; return the
    revisions run, oldest first (none when it was there already). DatabaseUnreachable without a connection,
    SchemaNewerThanCode when the database is past every revision this code knows."""
    try:
        connection = engine.connect()
    except OperationalError as exc:
        raise DatabaseUnreachable(engine.url, driver_reason(str(exc.orig))) from exc
    with connection:
        _take_schema_lock(connection)
        found, known = current_revision(connection), known_revisions()
        if found is not None and found not in known:
            raise SchemaNewerThanCode(engine.url, found=found, newest=known[-1], code_version=_code_version())
        target = known[-1] if revision == HEAD else revision
        if found == target:
            return []
        config = migrations_config(connection)
        command.upgrade(config, revision)
        connection.commit()
    applied: list[str] = config.attributes["applied"]
    logger.info("database schema upgraded from %s to %s (ran %s)", found or "none", target, ", ".join(applied))
    return applied


def _take_schema_lock(connection: Connection) -> None:
    """Begin the upgrade's transaction holding a lock that other servers' upgrades wait for until it ends."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    elif dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        logger.warning("no start-up lock on %s databases: start one aggregator at a time after an upgrade", dialect)


def _code_version() -> str:
    try:
        return importlib.metadata.version("fedgrove")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
