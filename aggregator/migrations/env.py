"""Alembic's environment for the aggregator's revisions: it runs them on the connection `aggregator.schema`
hands it, inside the transaction that holds the start-up lock, and never opens a connection of its own."""

from __future__ import annotations

from alembic import context

from aggregator.db import Base
from aggregator.schema import VERSION_TABLE

config = context.config
applied: list[str] = config.attributes["applied"]

context.configure(
    connection=config.attributes["connection"],
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite changes a column by copying its table: revisions use batch_alter_table
    on_version_apply=lambda *, step, **_: applied.append(step.up_revision_id),
)
with context.begin_transaction():
    context.run_migrations()
