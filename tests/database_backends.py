"""The database an aggregator under test keeps its state in: the SQLite file of its data folder, or a
database of its own on the session's real PostgreSQL cluster (`tests.postgres_server`).

Loaded as a pytest plugin. One suite, run against each backend, as Flower runs one LinkState suite against
each of its implementations: a test (or a module, with `pytestmark`) marked `@on_both_databases` runs once
per backend, with ids `[sqlite]` and `[postgresql]`; unmarked tests keep SQLite and never start the cluster.

* `database_backend` (module scope, so that module-scoped servers can take it too): "sqlite" unless marked;
* `database_url` (per test): None, the server's default (`<data_dir>/aggregator.db`), or the URL of a fresh
  PostgreSQL database that is dropped when the test ends;
* `backend_database(request, backend)`: the same for a fixture of a wider scope (a module's server).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.postgres_server import PostgresServer

SQLITE, POSTGRESQL = "sqlite", "postgresql"
on_both_databases = pytest.mark.parametrize("database_backend", [SQLITE, POSTGRESQL], indirect=True)


@contextmanager
def backend_database(request: pytest.FixtureRequest, backend: str) -> Iterator[str | None]:
    """None for SQLite (the data folder's file), else a new PostgreSQL database's URL, dropped on exit."""
    if backend == SQLITE:
        yield None
        return
    assert backend == POSTGRESQL, f"expected a database backend {SQLITE!r} or {POSTGRESQL!r}, got {backend!r}"
    cluster: PostgresServer = request.getfixturevalue("postgres_server")
    database = cluster.create_database()
    try:
        yield database.url
    finally:
        cluster.drop_database(database.name)


@pytest.fixture(scope="module")
def database_backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", SQLITE)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, database_backend: str) -> Iterator[str | None]:
    with backend_database(request, database_backend) as url:
        yield url
