"""Baseline: the tables as fedgrove created them before its schema was versioned.

Revision ID: 0001
Revises: none

Those servers ran `create_all`, then added by hand any nullable column a newer one declared to the tables an
older one had made (`branches.max_weight_share`, say). So on a database they wrote, this revision creates the
tables it lacks and adds the nullable columns of these tables it lacks, the same rule, kept here once and for
all; everything else it takes as it is. On an empty database it creates every table. The definitions are
frozen as they were (revision 0001's schema never changes): later changes are later revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id(name: str = "id", **options: object) -> sa.Column:
    return sa.Column(name, sa.String(64), nullable=False, **options)


def _text(name: str, length: int, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=nullable)


def _when(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def _number(name: str, kind: type[sa.types.TypeEngine], *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, kind(), nullable=nullable)


def baseline_tables() -> sa.MetaData:
    """The nine tables of revision 0001, in a metadata of their own."""
    tables = sa.MetaData()
    sa.Table("trees", tables, _id(primary_key=True), _text("name", 200, nullable=False), _id("owner_id"),
             _when("created_at"), sa.UniqueConstraint("name"))
    sa.Table("branches", tables, _id(primary_key=True), _id("tree_id"), _text("name", 200),
             _number("aggregation_target", sa.Integer), _text("run_status", 16), _number("run_number", sa.Integer),
             _number("analytics_ops", sa.JSON), _text("analytics_default_op", 16, nullable=True),
             _number("model_config_json", sa.JSON), _number("round_timeout_s", sa.Float, nullable=True),
             _number("min_leaves", sa.Integer, nullable=True), _number("max_weight_share", sa.Float, nullable=True),
             _when("created_at"), sa.UniqueConstraint("tree_id", "name"), sa.ForeignKeyConstraint(["tree_id"], ["trees.id"]))
    sa.Table("leaves", tables, _id(primary_key=True), _id("branch_id", index=True), _id("tree_id"), _id("owner_id"),
             _text("name", 200), _text("token_hash", 64), _when("created_at"),
             sa.ForeignKeyConstraint(["branch_id"], ["branches.id"]))
    sa.Table("aggregations", tables, _id(primary_key=True), _id("branch_id", index=True),
             _number("round", sa.Integer), _text("status", 16), _text("kind", 32, nullable=True),
             _number("contributors", sa.Integer), _number("weight_total", sa.Float),
             _number("missing_leaves", sa.JSON), _when("opened_at"), _when("completed_at", nullable=True),
             sa.UniqueConstraint("branch_id", "round"), sa.ForeignKeyConstraint(["branch_id"], ["branches.id"]))
    sa.Table("contributions", tables, _id(primary_key=True), _id("aggregation_id", index=True),
             _id("leaf_id", index=True), _number("weighting", sa.Float), _number("size", sa.Integer),
             _text("digest", 100), _text("content_digest", 64), _when("created_at"),
             sa.UniqueConstraint("aggregation_id", "leaf_id"),
             sa.ForeignKeyConstraint(["aggregation_id"], ["aggregations.id"]),
             sa.ForeignKeyConstraint(["leaf_id"], ["leaves.id"]))
    sa.Table("deliveries", tables, _id("leaf_id", primary_key=True), _id("aggregation_id", primary_key=True),
             _when("delivered_at"))
    sa.Table("performance", tables, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             _id("branch_id", index=True), _id("leaf_id"), _id("aggregation_id"), _text("mode", 32),
             sa.Column("data", sa.Text, nullable=False), _when("created_at"))
    sa.Table("metrics_usage", tables, _id("leaf_id", primary_key=True), _number("reports", sa.Integer),
             _number("data_bytes", sa.Integer))
    return tables


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    for table in baseline_tables().sorted_tables:
        if table.name not in present:
            table.create(bind)
            continue
        columns = {column["name"] for column in sa.inspect(bind).get_columns(table.name)}
        for column in table.columns:
            if column.nullable and column.name not in columns:
                op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
