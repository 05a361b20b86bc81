"""The aggregator's schema is versioned (Alembic revisions in aggregator/migrations) and upgraded at start,
under a lock, on SQLite and on a real PostgreSQL server: a fedgrove upgrade needs no hand-made schema change.

"Before versioning" is the database every fedgrove up to commit 249456d created: its `create_all`, kept
as it wrote it in tests/schema_before_versioning.sql, and no version table.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from sqlalchemy import inspect, select, text

from aggregator.blobstore import LocalBlobStore
from aggregator.config import AggregatorSettings
from aggregator.db import Aggregation, Base, Branch, Contribution, MetricsUsage, make_engine, make_session_factory, new_engine
from aggregator.registry import LeafCredentials, Registry
from aggregator.schema import current_revision, migration_context, upgrade_schema
from aggregator.server import ServerThread
from tests.database_backends import POSTGRESQL, on_both_databases
from tests.fedavg_oracle import weighted_mean_float64
from tests.schema_helpers import create_tables_before_versioning, drop_every_table, schema_of, sqlite_url_or
from tests.upload_helpers import digest_of, npz_bytes, upload, weights

NEWEST = "0002"
GIB = 1024**3


@pytest.fixture
def url(database_url: str | None, tmp_path: Path) -> str:
    return sqlite_url_or(database_url, tmp_path / "aggregator")


def _revision(url: str) -> str | None:
    engine = new_engine(url)
    try:
        with engine.connect() as connection:
            return current_revision(connection)
    finally:
        engine.dispose()


@on_both_databases
def test_a_new_database_is_at_the_newest_revision_which_builds_what_the_models_declare(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == NEWEST
            assert compare_metadata(migration_context(connection), Base.metadata) == []
    finally:
        engine.dispose()


@on_both_databases
def test_the_baseline_revision_builds_the_tables_fedgrove_created_before_versioning(url: str) -> None:
    create_tables_before_versioning(url)
    before_versioning = schema_of(url)
    drop_every_table(url)

    engine = new_engine(url)
    try:
        assert upgrade_schema(engine, "0001") == ["0001"]
    finally:
        engine.dispose()

    assert schema_of(url) == before_versioning


def _branch_before_versioning(url: str, blobs: LocalBlobStore, scratch: Path) -> tuple[list[LeafCredentials], np.ndarray]:
    """Tables as fedgrove made them before versioning, holding a branch of two leaves whose round 1 has the
    first leaf's upload (row and blob): its credentials, and the uploaded layer."""
    create_tables_before_versioning(url)
    engine = new_engine(url)
    try:
        sessions = make_session_factory(engine)
        _tree, branch_id, leaves = Registry(sessions).create_branch(tree="t", branch="old", leaves=2)
        layer = np.array([1.0, -3.0, 0.5], np.float32)
        body = npz_bytes(weights(2.0, [layer]))
        (scratch / "upload.npz").write_bytes(body)
        file_id = uuid.uuid4().hex
        blobs.put_file(file_id, scratch / "upload.npz")
        with sessions() as session:
            round_1 = session.scalar(select(Aggregation.id).where(Aggregation.branch_id == branch_id))
            session.add(Contribution(id=file_id, aggregation_id=round_1, leaf_id=leaves[0].id, weighting=2.0,
                                     size=len(body), digest=digest_of(body)))
            session.commit()
    finally:
        engine.dispose()
    return leaves, layer


@on_both_databases
def test_a_database_from_before_versioning_keeps_its_rows_and_is_upgraded_when_the_server_starts(
    url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "aggregator"
    (tmp_path / "scratch").mkdir()
    leaves, first = _branch_before_versioning(url, LocalBlobStore(data_dir / "blobs"), tmp_path / "scratch")
    assert _revision(url) is None

    settings = AggregatorSettings(data_dir=data_dir, port=0, database_url=url, _env_file=None)
    with ServerThread(settings) as server:
        second = np.array([4.0, 4.0, 4.0], np.float32)
        response = upload(server.url, leaves[1], npz_bytes(weights(6.0, [second])))  # its token's hash survived
        assert response.status_code == 201, response.text
        status = server.context.reports.status(leaves[0].branch_id, connected_leaf_ids=set())
        with server.context.blobs.open_local(status["last_aggregation_id"]) as path, np.load(path) as aggregate:
            expected = weighted_mean_float64([(2.0, [first]), (6.0, [second])])[0]
            np.testing.assert_array_equal(aggregate["layer_0"], expected)  # the old round's upload counted

    assert (status["aggregations_completed"], status["open_round"]) == (1, 2)
    assert _revision(url) == NEWEST
    engine = new_engine(url)
    try:
        inspector = inspect(engine)
        kinds = {(table, column["name"]): column["type"].compile(engine.dialect)
                 for table in ("contributions", "metrics_usage") for column in inspector.get_columns(table)}
    finally:
        engine.dispose()
    assert (kinds["contributions", "size"], kinds["metrics_usage", "data_bytes"]) == ("BIGINT", "BIGINT")


@on_both_databases
def test_a_database_from_before_max_weight_share_gets_the_column_when_the_server_starts(url: str) -> None:
    """A fedgrove older than `branches.max_weight_share` made the table without it; such servers added it by
    hand at start. The baseline revision does it once, for good."""
    create_tables_before_versioning(url)
    engine = new_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE branches DROP COLUMN max_weight_share"))
    finally:
        engine.dispose()

    engine = make_engine(url)
    try:
        _tree, branch_id, _leaves = Registry(make_session_factory(engine)).create_branch(
            tree="t", branch="old", leaves=2, max_weight_share=0.75
        )
        with make_session_factory(engine)() as session:
            assert session.get(Branch, branch_id).max_weight_share == 0.75
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_backend", [POSTGRESQL], indirect=True)
def test_byte_counts_past_2_gib_are_stored(url: str) -> None:
    """PostgreSQL's INTEGER stops at 2**31 - 1 (SQLite's holds 64 bits): an upload or a leaf's metrics past
    2 GiB failed with "integer out of range" after the blob was stored."""
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        _tree, branch_id, (leaf,) = Registry(sessions).create_branch(tree="t", branch="big", leaves=1)
        with sessions() as session:
            round_1 = session.scalar(select(Aggregation.id).where(Aggregation.branch_id == branch_id))
            session.add(Contribution(id=uuid.uuid4().hex, aggregation_id=round_1, leaf_id=leaf.id, weighting=1.0,
                                     size=3 * GIB, digest="-"))
            session.add(MetricsUsage(leaf_id=leaf.id, reports=1, data_bytes=3 * GIB))
            session.commit()
        with sessions() as session:
            assert session.scalars(select(Contribution.size)).all() == [3 * GIB]
            assert session.get(MetricsUsage, leaf.id).data_bytes == 3 * GIB
    finally:
        engine.dispose()


@on_both_databases
def test_two_servers_starting_together_upgrade_the_schema_once(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second reads the version only once the first has committed its upgrade, so it finds the newest
    revision and runs none (without the lock both ran them, and the second failed or hung on the first's
    tables)."""
    upgrading = threading.Event()
    real_upgrade = command.upgrade

    def slow_upgrade(config, revision: str) -> None:  # type: ignore[no-untyped-def]
        upgrading.set()
        time.sleep(0.5)  # the second server starts meanwhile
        real_upgrade(config, revision)

    monkeypatch.setattr(command, "upgrade", slow_upgrade)
    engines = [new_engine(url), new_engine(url)]
    ran: dict[int, list[str] | BaseException] = {}

    def start(index: int) -> None:
        try:
            ran[index] = upgrade_schema(engines[index])
        except BaseException as exc:  # compared below
            ran[index] = exc

    servers = [threading.Thread(target=start, args=(index,)) for index in (0, 1)]
    try:
        servers[0].start()
        assert upgrading.wait(timeout=30)
        servers[1].start()
        for server in servers:
            server.join(timeout=30)
        assert not any(server.is_alive() for server in servers)
    finally:
        for engine in engines:
            engine.dispose()

    assert ran == {0: ["0001", NEWEST], 1: []}
