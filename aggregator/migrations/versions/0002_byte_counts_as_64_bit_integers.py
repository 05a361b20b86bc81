"""Byte counts as 64-bit integers: `contributions.size` and `metrics_usage.data_bytes`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06

SQLite's INTEGER holds 64 bits, PostgreSQL's 32: there, an upload past 2 GiB (FEDGROVE_MAX_UPLOAD_BYTES is
the operator's to raise) failed with "integer out of range" after its blob was stored, and so would a leaf's
metrics past a quota raised over 2 GiB. On SQLite the tables are copied with the new declared type.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, column in (("contributions", "size"), ("metrics_usage", "data_bytes")):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
