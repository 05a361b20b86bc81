"""Durability: the server killed with SIGKILL and started again on the same data folder and port.

The server runs as `python -m aggregator` in a subprocess; the leaves are the official client, whose
WebSocket reconnects on its own (back-off 1.5, at most 2 s apart) and asks for a fresh ticket.

Each test costs two server starts and a kill (~13 s): on PostgreSQL too run only the two whose outcome is
the database's, the uploads counted once after a kill and the round finished at start-up.
"""

from __future__ import annotations

import hashlib
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from branchkey import APIConfig, Client, Credentials, RetryConfig, WebSocketConfig
from sqlalchemy import create_engine, select, text

from aggregator.blobstore import LocalBlobStore
from aggregator.db import Aggregation, Contribution, make_engine, make_session_factory
from tests.aggregator_process import AggregatorProcess
from tests.database_backends import on_both_databases
from tests.fedavg_oracle import weighted_mean_float64
from tests.upload_helpers import digest_of, npz_bytes, weights

pytestmark = pytest.mark.slow

Upload = tuple[float, list[np.ndarray]]


def _contributions(seed: int) -> list[Upload]:
    rng = np.random.default_rng(seed)
    return [
        (float(weighting), [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)])
        for weighting in (12.0, 30.0, 7.0)
    ]


@pytest.fixture
def server(tmp_path: Path, database_url: str | None) -> Iterator[AggregatorProcess]:
    process = AggregatorProcess(tmp_path / "data", database_url=database_url)
    yield process.start()
    process.stop()


@pytest.fixture
def leaves(server: AggregatorProcess) -> list[Credentials]:
    created = server.admin("POST", "/branches", json={"tree": "restart", "branch": "b", "leaves": 3})
    return [Credentials(**leaf) for leaf in created["leaves"]]


@pytest.fixture
def connect(server: AggregatorProcess, tmp_path: Path) -> Iterator[Callable[[Credentials], Client]]:
    """The official client for a leaf, its WebSocket connected before it is returned."""
    clients: list[Client] = []

    def make(credentials: Credentials) -> Client:
        client = Client(
            credentials,
            api_config=APIConfig(host=server.url, ssl=False),
            websocket_config=WebSocketConfig(reconnect_backoff_factor=1.5, reconnect_max_delay=2),
            retry_config=RetryConfig(max_retries=0, total_timeout=30),
            output_dir=str(tmp_path / "downloads" / credentials.name),
        )
        clients.append(client)
        _wait_connected(server, [credentials])
        return client

    yield make
    for client in clients:
        client.close()


def _status(server: AggregatorProcess, branch_id: str) -> dict:
    return server.admin("GET", f"/branches/{branch_id}")


def _wait_connected(server: AggregatorProcess, leaves: list[Credentials], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    names = {leaf.name for leaf in leaves}
    while not names <= set(_status(server, leaves[0].branch_id)["leaves_connected"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sorted(names)} did not connect their WebSockets within {timeout_s} s")
        time.sleep(0.05)


def _upload(client: Client, folder: Path, contribution: Upload) -> str:
    weighting, layers = contribution
    return client.file_upload(client.save_weights(str(folder / f"{client.leaf_id}-{uuid.uuid4().hex}"),
                                                  weighting, layers))


def _assert_weighted_mean(path: str, contributions: list[Upload]) -> None:
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["layer_0", "layer_1"]
        for index, expected in enumerate(weighted_mean_float64(contributions)):
            np.testing.assert_allclose(archive[f"layer_{index}"], expected, rtol=1e-6, atol=1e-7)


def _completed_rows(server: AggregatorProcess) -> list[tuple[int, int, float]]:
    """(round, contributors, total weighting) of every finished aggregation, read from the database."""
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as database:
            return [tuple(row) for row in database.execute(text(
                "SELECT round, contributors, weight_total FROM aggregations WHERE status = 'complete' ORDER BY round"
            ))]
    finally:
        engine.dispose()


@on_both_databases
def test_uploads_before_a_kill_count_once_in_the_aggregation_finished_after_it(
    server: AggregatorProcess, leaves: list[Credentials], connect, tmp_path: Path
) -> None:
    contributions = _contributions(1)
    early = [connect(leaf) for leaf in leaves[:2]]
    for client, contribution in zip(early, contributions, strict=False):
        _upload(client, tmp_path, contribution)
    assert _status(server, leaves[0].branch_id)["uploads_in_open_aggregation"] == 2

    server.kill()
    server.start()
    late = connect(leaves[2])
    _upload(late, tmp_path, contributions[2])

    aggregation_id = late.queue.get(timeout=15)
    _assert_weighted_mean(late.file_download(aggregation_id), contributions)
    assert [client.queue.get(timeout=15) for client in early] == [aggregation_id] * 2  # reconnected, told once
    status = _status(server, leaves[0].branch_id)
    assert (status["aggregations_completed"], status["open_round"], status["uploads_in_open_aggregation"]) == (1, 2, 0)
    assert _completed_rows(server) == [(1, 3, sum(w for w, _ in contributions))]


def test_an_aggregate_not_yet_downloaded_is_sent_again_to_a_leaf_that_reconnects_after_a_kill(
    server: AggregatorProcess, leaves: list[Credentials], connect, tmp_path: Path
) -> None:
    contributions = _contributions(2)
    clients = [connect(leaf) for leaf in leaves]
    for client, contribution in zip(clients, contributions, strict=True):
        _upload(client, tmp_path, contribution)
    aggregation_id = clients[0].queue.get(timeout=15)
    assert [client.queue.get(timeout=15) for client in clients[1:]] == [aggregation_id] * 2
    blob = hashlib.sha256((server.data_dir / "blobs" / aggregation_id).read_bytes()).hexdigest()
    clients[2].file_download(aggregation_id)  # this leaf has it: it is not sent again

    server.kill()
    server.start()

    for client in clients[:2]:
        assert client.queue.get(timeout=15) == aggregation_id
        path = client.file_download(aggregation_id)
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == blob
        _assert_weighted_mean(path, contributions)
    _wait_connected(server, leaves)
    time.sleep(0.5)
    for client in clients:
        with pytest.raises(queue.Empty):
            client.queue.get(timeout=0.2)  # at most once per connection, never to a leaf that downloaded
    assert _completed_rows(server) == [(1, 3, sum(w for w, _ in contributions))]


def _commit_without_finalising(server: AggregatorProcess, leaf: Credentials, contribution: Upload) -> None:
    """What an upload leaves when the process dies between its commit and the finalisation: the blob, the
    committed row, and its scratch copy (which start-up deletes)."""
    archive = server.data_dir / "tmp" / "committed.npz"
    body = npz_bytes(weights(*contribution))
    archive.write_bytes(body)
    file_id = uuid.uuid4().hex
    LocalBlobStore(server.data_dir / "blobs").put_file(file_id, archive)
    engine = make_engine(server.database_url)
    try:
        with make_session_factory(engine)() as session:
            open_id = session.scalar(
                select(Aggregation.id).where(Aggregation.branch_id == leaf.branch_id, Aggregation.status == "open")
            )
            session.add(Contribution(id=file_id, aggregation_id=open_id, leaf_id=leaf.id, weighting=contribution[0],
                                     size=len(body), digest=digest_of(body)))
            session.commit()
    finally:
        engine.dispose()


@on_both_databases
def test_an_aggregation_whose_last_upload_was_committed_before_a_kill_is_finished_at_start_up(
    server: AggregatorProcess, leaves: list[Credentials], connect, tmp_path: Path
) -> None:
    contributions = _contributions(3)
    early = [connect(leaf) for leaf in leaves[:2]]
    for client, contribution in zip(early, contributions, strict=False):
        _upload(client, tmp_path, contribution)
    for client in early:
        client.close()
    server.kill()
    _commit_without_finalising(server, leaves[2], contributions[2])

    server.start()

    status = _status(server, leaves[0].branch_id)
    assert (status["aggregations_completed"], status["open_round"]) == (1, 2)
    assert list((server.data_dir / "tmp").iterdir()) == []
    late = connect(leaves[2])
    aggregation_id = late.queue.get(timeout=15)
    assert aggregation_id == status["last_aggregation_id"]
    _assert_weighted_mean(late.file_download(aggregation_id), contributions)
    assert _completed_rows(server) == [(1, 3, sum(w for w, _ in contributions))]


def test_a_leaf_resending_its_last_rounds_archive_after_a_restart_gets_that_rounds_file_id(
    server: AggregatorProcess, leaves: list[Credentials], connect, tmp_path: Path
) -> None:
    """What each leaf last contributed is read back from the database after a restart: the newest round's."""
    clients = [connect(leaf) for leaf in leaves]
    sent: list[tuple[str, str]] = []  # (path, file id) of the last leaf's archive, per round
    for seed in (3, 4):
        for index, (client, (weighting, layers)) in enumerate(zip(clients, _contributions(seed), strict=True)):
            path = client.save_weights(str(tmp_path / f"{seed}-{index}"), weighting, layers)
            file_id = client.file_upload(path)
        sent.append((path, file_id))
        for client in clients:
            client.queue.get(timeout=15)

    server.kill()
    server.start()
    _wait_connected(server, leaves)

    (_, _), (latest_path, latest_id) = sent
    assert clients[2].file_upload(latest_path) == latest_id
    assert _status(server, leaves[0].branch_id)["uploads_in_open_aggregation"] == 0
    assert [row[:2] for row in _completed_rows(server)] == [(1, 3), (2, 3)]
