"""Chooses the database of Prefect's ephemeral server for a one-command run (`fedgrove demo`).

With no Prefect API configured, Prefect starts a temporary server backed by `$PREFECT_HOME/prefect.db`.
Under this pipeline's load (five leaf flows in threads, each task run recorded from events) that SQLite file
answers concurrent writes with "database is locked", which the server turns into a 503 and the client into
a retry after 2, 4, 8, 16 s: a demo lost 6 s starting its leaves and 16 s starting its baselines that way.
An in-memory database has a single connection, so the server's writes queue instead of failing.
The price: the run's history ends with the process (the ephemeral server has no UI anyway; the README's
"Watch it in the Prefect UI" starts a real server, whose database is its own).

Nothing changes when the user has configured Prefect: an API URL (a real or Cloud server), or a database URL
of their own (`PREFECT_SERVER_DATABASE_CONNECTION_URL`, or the older `PREFECT_API_DATABASE_CONNECTION_URL`).
"""

from __future__ import annotations

import os
from typing import Literal

IN_MEMORY_URL = "sqlite+aiosqlite:///file::memory:?cache=shared&uri=true&check_same_thread=false"
DATABASE_VARIABLES = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def choose_ephemeral_database(mode: Literal["memory", "file"]) -> str | None:
    """Point the ephemeral server at an in-memory database when `mode` is "memory" and Prefect is not
    configured otherwise; returns the URL it set, or None. Call before the first flow starts."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    configured = (
        settings.api.url
        or any(os.environ.get(name) for name in DATABASE_VARIABLES)
        or "connection_url" in settings.server.database.model_fields_set  # e.g. in the active Prefect profile
    )
    if mode == "file" or configured:
        return None
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = IN_MEMORY_URL
    return IN_MEMORY_URL
