"""The app factory of the demo's temporary Prefect server: Prefect's own app, on an in-memory database that starts
from a migrated copy instead of being migrated at every start.

Prefect migrates its database when the server starts. An in-memory database is new at every start, so every
`fedgrove demo` ran all of Prefect's alembic migrations before its first flow: the temporary server was ready
after 16–19 s, against 6–8 s on a database that was already migrated. This factory keeps one migrated, empty
database per Prefect version in `$PREFECT_HOME/fedgrove/` (built once with `prefect server database upgrade`
on a file) and copies it into the in-memory database (SQLite's backup API) before Prefect's app starts; Prefect
then finds its schema at the head revision and has nothing to migrate. It holds one connection to the
in-memory database for the life of the process, which keeps that database alive for Prefect's own connections.

Anything else (a file database, the user's own database) gets Prefect's app unchanged. If the copy cannot be
made, the server says why on stderr and Prefect migrates the in-memory database itself, as before; a
damaged copy is removed, so the next start builds it again.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI

from fedgrove.prefect_ephemeral import DATABASE_VARIABLE, IN_MEMORY_URL
from fedgrove_common.startup_heap import startup_imports

IN_MEMORY_DATABASE = "file::memory:?cache=shared"  # what SQLite opens for IN_MEMORY_URL
MIGRATION_TIMEOUT_S = 600

_kept_open: sqlite3.Connection | None = None


class SchemaTemplateError(RuntimeError):
    """The migrated template database could not be built."""


def template_path(prefect_home: Path, version: str) -> Path:
    return prefect_home / "fedgrove" / f"prefect-{version}-schema.db"


def schema_template(prefect_home: Path, version: str) -> Path:
    """The migrated, empty database for this Prefect version; built (once) if it is not there yet."""
    template = template_path(prefect_home, version)
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as scratch:
        building = Path(scratch) / template.name
        env = {**os.environ, DATABASE_VARIABLE: f"sqlite+aiosqlite:///{building}"}
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
            env=env, capture_output=True, text=True, timeout=MIGRATION_TIMEOUT_S,
        )
        if done.returncode != 0 or not building.is_file():
            raise SchemaTemplateError(
                f"`prefect server database upgrade` on {building} exited with {done.returncode}: "
                f"{done.stderr.strip()[-2000:]}"
            )
        os.replace(building, template)  # atomic: a concurrent start sees the whole file or none
    return template


def restore_into_memory(template: Path) -> sqlite3.Connection:
    """Copy `template` into the process's shared in-memory database; the returned connection keeps it alive."""
    memory = sqlite3.connect(IN_MEMORY_DATABASE, uri=True, check_same_thread=False)
    source = sqlite3.connect(f"file:{template}?immutable=1", uri=True)  # read-only, no -wal/-shm files
    try:
        source.backup(memory)
    except BaseException:
        memory.close()
        raise
    finally:
        source.close()
    return memory


def create_app() -> FastAPI:
    """Prefect's server app; on the in-memory database, started from the migrated template."""
    with startup_imports():  # Prefect's server modules live as long as it: no full collection walks them
        return _create_app()


def _create_app() -> FastAPI:
    global _kept_open
    import prefect
    from prefect.server.api.server import create_app as create_prefect_app
    from prefect.settings import get_current_settings

    if os.environ.get(DATABASE_VARIABLE) == IN_MEMORY_URL and _kept_open is None:
        home = Path(get_current_settings().home)
        template = template_path(home, prefect.__version__)
        try:
            _kept_open = restore_into_memory(schema_template(home, prefect.__version__))
        except sqlite3.Error as exc:  # a damaged copy: the next start builds a new one
            template.unlink(missing_ok=True)
            print(f"fedgrove: could not copy {template} into Prefect's in-memory database ({exc}); removed it, "
                  "the next start builds it again; Prefect migrates the database this time", file=sys.stderr)
        except (OSError, subprocess.SubprocessError, SchemaTemplateError) as exc:
            print(f"fedgrove: could not build {template} ({exc}); Prefect migrates its in-memory database "
                  "instead", file=sys.stderr)
    return create_prefect_app()
