"""The aggregator's schema as a line of Alembic revisions, run by `aggregator.schema` at every start.

Why a package of its own: the tables change as the server grows, and a site upgrading fedgrove must never
change them by hand. Each change of `aggregator/db.py`'s models comes with a revision in `versions/`, named
by the next number (0001, 0002, ...), which upgrades a database of the revision before it; a test checks
that the newest revision builds exactly what the models declare, on SQLite and on PostgreSQL.

    python -m aggregator.migrations "what changed"    # writes versions/NNNN_what_changed.py: read it, then test

Revisions only go forward (no `downgrade`): a server refuses a database a newer fedgrove has upgraded, and
going back means restoring a backup taken before the upgrade.
"""
