"""`python -m aggregator.migrations "what changed"`: write the next revision, holding what the models in
`aggregator/db.py` declare and the revisions do not build yet (Alembic's autogenerate, against a scratch
SQLite database upgraded to the newest revision). Read what it wrote: autogenerate misses some changes."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from aggregator.schema import known_revisions, migrations_config, upgrade_schema


def write_revision(message: str) -> Path:
    number = f"{int(known_revisions()[-1]) + 1:04d}"
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{folder}/scratch.db")
        try:
            upgrade_schema(engine)
            with engine.connect() as connection:
                config = migrations_config(connection)
                script = command.revision(config, message, autogenerate=True, rev_id=number)
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        sys.exit('usage: python -m aggregator.migrations "what changed"')
    print(write_revision(sys.argv[1]))
