"""The server's durable state in SQL (SQLite by default, PostgreSQL through psycopg, any SQLAlchemy URL):
what survives a restart.

Archives themselves live in the blob store; rows here say which archive belongs to which leaf,
aggregation and branch, so that an open aggregation can be rebuilt after a crash. These models are the
schema's newest state; `aggregator/migrations` holds the revisions that build it (`aggregator.schema`).
"""

from __future__ import annotations

import logging
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from aggregator.schema import upgrade_schema
from aggregator.statuses import AggregationStatus, RunStatus

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Tree(Base):
    __tablename__ = "trees"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Branch(Base):
    __tablename__ = "branches"
    __table_args__ = (UniqueConstraint("tree_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tree_id: Mapped[str] = mapped_column(ForeignKey("trees.id"))
    name: Mapped[str] = mapped_column(String(200))
    aggregation_target: Mapped[int] = mapped_column(Integer)
    run_status: Mapped[str] = mapped_column(String(16), default=RunStatus.START)
    run_number: Mapped[int] = mapped_column(Integer, default=1)
    analytics_ops: Mapped[dict] = mapped_column(JSON, default=dict)
    analytics_default_op: Mapped[str | None] = mapped_column(String(16), nullable=True)
    model_config_json: Mapped[dict] = mapped_column(JSON, default=dict)
    round_timeout_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_leaves: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_weight_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Leaf(Base):
    __tablename__ = "leaves"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    branch_id: Mapped[str] = mapped_column(ForeignKey("branches.id"), index=True)
    tree_id: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Aggregation(Base):
    """One aggregation of a branch; its id is also the file id of the aggregate once complete."""

    __tablename__ = "aggregations"
    __table_args__ = (UniqueConstraint("branch_id", "round"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    branch_id: Mapped[str] = mapped_column(ForeignKey("branches.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=AggregationStatus.OPEN)
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    contributors: Mapped[int] = mapped_column(Integer, default=0)
    weight_total: Mapped[float] = mapped_column(Float, default=0.0)
    missing_leaves: Mapped[list] = mapped_column(JSON, default=list)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Contribution(Base):
    """One leaf's archive in one aggregation; a re-upload replaces the row, so it never counts twice."""

    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("aggregation_id", "leaf_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    aggregation_id: Mapped[str] = mapped_column(ForeignKey("aggregations.id"), index=True)
    leaf_id: Mapped[str] = mapped_column(ForeignKey("leaves.id"), index=True)
    weighting: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(BigInteger)  # bytes: an upload limit past 2 GiB is the operator's to set
    digest: Mapped[str] = mapped_column(String(100))
    content_digest: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """A leaf asked for an aggregate's download link: it is not re-sent on reconnection."""

    __tablename__ = "deliveries"
    leaf_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    aggregation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivered_at: Mapped[datetime] = mapped_column(default=utcnow)


class PerformanceRecord(Base):
    __tablename__ = "performance"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    branch_id: Mapped[str] = mapped_column(String(64), index=True)
    leaf_id: Mapped[str] = mapped_column(String(64))
    aggregation_id: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MetricsUsage(Base):
    """What a leaf's performance reports take in the database, against its quota."""

    __tablename__ = "metrics_usage"
    leaf_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reports: Mapped[int] = mapped_column(Integer, default=0)
    data_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


def owner_only(path: Path, mode: int) -> None:
    """Give `path` `mode` (0600, 0700) if it has another; a file this process may not change is left as it is."""
    try:
        if path.exists() and (was := stat.S_IMODE(path.stat().st_mode)) != mode:
            path.chmod(mode)
            logger.info("%s was mode %o, now %o: readable by its owner only", path, was, mode)
    except PermissionError:
        logger.warning("could not restrict %s to its owner (mode %o)", path, mode)


def make_engine(url: str) -> Engine:
    """An engine on `url` whose database has this code's schema: upgraded at need, under the start-up lock
    (`aggregator.schema`). DatabaseRefused when the database cannot be reached or is newer than this code."""
    engine = new_engine(url)
    try:
        upgrade_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def new_engine(url: str) -> Engine:
    """An engine on `url` as the server configures it; the schema is left as it is."""
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the database's mode.
        os.close(os.open(database, os.O_CREAT | os.O_WRONLY, 0o600))
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            owner_only(path, 0o600)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a crash of the process
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
