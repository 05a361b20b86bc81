"""Databases as an older fedgrove left them, and a comparable picture of a schema, for the migration tests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, create_engine, inspect
from sqlalchemy.engine import Engine

from aggregator.schema import VERSION_TABLE

BEFORE_VERSIONING = Path(__file__).with_name("schema_before_versioning.sql")
# What commit 249456d's SQLAlchemy wrote for a naive DateTime and for an autoincrementing Integer key.
DIALECT_WORDS = {
    "sqlite": {"timestamp": "DATETIME", "serial": "INTEGER"},
    "postgresql": {"timestamp": "TIMESTAMP WITHOUT TIME ZONE", "serial": "SERIAL"},
}


def sqlite_url_or(database_url: str | None, data_dir: Path) -> str:
    """The URL the server uses: `database_url`, or its default, the data folder's SQLite file."""
    return database_url or f"sqlite:///{data_dir / 'aggregator.db'}"


def create_tables_before_versioning(url: str) -> None:
    """The tables as fedgrove's `create_all` made them before versioning (its DDL, kept as it wrote it), no
    version table."""
    engine = _plain_engine(url)
    script = BEFORE_VERSIONING.read_text()
    code = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    code = code.format(**DIALECT_WORDS[engine.dialect.name])
    try:
        with engine.begin() as connection:
            for statement in filter(str.strip, code.split(";")):
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def drop_every_table(url: str) -> None:
    engine = _plain_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
    finally:
        engine.dispose()


def schema_of(url: str) -> dict[str, dict[str, object]]:
    """Every table but the version table: its columns (name, type as the dialect writes it, nullable), primary
    key, unique constraints, indexes and foreign keys, in a form two databases can be compared by."""
    engine = _plain_engine(url)
    try:
        inspector = inspect(engine)
        return {
            table: {
                "columns": [(c["name"], c["type"].compile(engine.dialect), c["nullable"])
                            for c in inspector.get_columns(table)],
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
                "indexes": sorted((i["name"], tuple(i["column_names"]), i["unique"])
                                  for i in inspector.get_indexes(table)),
                "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                        tuple(f["referred_columns"])) for f in inspector.get_foreign_keys(table)),
            }
            for table in sorted(inspector.get_table_names())
            if table != VERSION_TABLE
        }
    finally:
        engine.dispose()


def _plain_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return create_engine(url)
