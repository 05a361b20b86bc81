"""Load and soak: the real server with many official `branchkey` clients and a thousand idle WebSockets.

`test_100_leaves_...`: 100 official clients in threads of this process, each with its WebSocket up before
round 1, on one branch with target 100 for 20 rounds. Each leaf takes each round's aggregation id from its
one-slot LIFO queue before the next round's upload (the rounds are separated by a barrier, and a leaf's queue
must be empty before it uploads: the server sends an aggregation to a connection at most once).

`test_1000_idle_websockets_...`: the server as its own process (`python -m aggregator`, so its RSS is its
own), 1,000 WebSocket connections that never send anything held open for FEDGROVE_SOAK_SECONDS (60 in CI),
while a 5-leaf branch aggregates round after round with the official client.

Both report their figures as a log line (shown by `pytest -rA`) and as `record_property` (JUnit XML).

Its length (~440 lines) is two long scenarios and the measurement code they alone use.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import httpx
import numpy as np
import pytest
from branchkey import APIConfig, Client, Credentials, RetryConfig
from sqlalchemy import select
from websockets.sync.client import connect

from aggregator.config import AggregatorSettings
from aggregator.db import Aggregation, make_engine, make_session_factory
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.aggregator_fixtures import wait_until_connected
from tests.fedavg_oracle import weighted_mean_float64
from tests.upload_helpers import auth_headers
from tests.load_helpers import (
    ErrorLogTrap,
    IdleSockets,
    MeasuredAggregator,
    RssSampler,
    StatusCounts,
    access_log_statuses,
    counted,
    ensure_fd_limit,
    percentiles,
    take_turns_checking_archives,
)

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)  # the figures are INFO records; pytest's capture handler keeps every level

MB = 1_000_000
QUEUE_TIMEOUT_S = 60.0


# --- one round of one leaf ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeafRound:
    upload_started: float  # time.monotonic()
    notified: float
    notified_wall: float  # time.time(), to compare with the server's `completed_at`
    aggregation_id: str
    download: Path | None


def _layers(rng: np.random.Generator, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


def _leaf_round(client: Client, folder: Path, weighting: float, layers: list[np.ndarray], *,
                download: bool) -> LeafRound:
    """Upload, take the round's id from the queue, maybe download: what a leaf does each round."""
    assert client.queue.empty(), f"a stale id waits in the queue before the upload: {client.queue.get_nowait()}"
    path = client.save_weights(str(folder / "weights"), weighting, layers)
    started = time.monotonic()
    client.file_upload(path)
    aggregation_id = client.queue.get(timeout=QUEUE_TIMEOUT_S)
    notified, notified_wall = time.monotonic(), time.time()
    downloaded = Path(client.file_download(aggregation_id)) if download else None
    return LeafRound(started, notified, notified_wall, aggregation_id, downloaded)


def _gather(futures: list[Future[LeafRound]], timeout_s: float) -> list[LeafRound]:
    """Every leaf's result; if any leaf failed, one error naming every leaf that did and why (the first
    failure ends the wait: the round cannot finish without that leaf)."""
    done, pending = wait(futures, timeout=timeout_s, return_when=FIRST_EXCEPTION)
    if pending:
        wait(pending, timeout=2)  # the others' failures, if they come at once
    failures = {}
    for index, future in enumerate(futures):
        if not future.done():
            failures[index] = f"still running after {timeout_s} s"
        elif future.exception() is not None:
            failures[index] = f"{type(future.exception()).__name__}: {future.exception()}"[:300]
    assert failures == {}, f"{len(failures)} leaves failed: {failures}"
    return [future.result() for future in futures]


def _assert_exact(path: Path, expected: list[np.ndarray]) -> None:
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {f"layer_{i}" for i in range(len(expected))}
        for index, layer in enumerate(expected):
            got = archive[f"layer_{index}"]
            assert got.dtype == layer.dtype and got.shape == layer.shape
            np.testing.assert_allclose(got, layer, rtol=1e-6, atol=1e-7)


def _report(record_property: Callable[[str, object], None], name: str, figures: dict) -> None:
    for key, value in figures.items():
        record_property(key, value)
    logger.info("%s: %s", name, json.dumps(figures, sort_keys=True))


# --- 100 leaves, 20 rounds ------------------------------------------------------------------------


@pytest.fixture
def counts() -> StatusCounts:
    return StatusCounts()


@pytest.fixture
def server_errors() -> ErrorLogTrap:
    return ErrorLogTrap()


@pytest.fixture
def aggregator(
    aggregator_settings: AggregatorSettings, counts: StatusCounts, server_errors: ErrorLogTrap
) -> Iterator[ServerThread]:
    """The shared fixture's server with every response status counted (`branch` and `leaf_client` use it)."""
    server = ServerThread(aggregator_settings)  # uvicorn's config resets its loggers: trap their errors after
    counted(server, counts)
    with server_errors.installed(), server:
        yield server


def _completed(server: ServerThread, branch_id: str, round_number: int) -> tuple[str, float]:
    """The id of the branch's finished aggregation of `round_number` and when it finished (epoch seconds)."""
    with server.context.sessions() as session:
        row = session.scalar(
            select(Aggregation).where(Aggregation.branch_id == branch_id, Aggregation.round == round_number,
                                      Aggregation.status.in_(("complete", "expired")))
        )
        assert row is not None, f"round {round_number} of branch {branch_id} did not finish"
        return row.id, row.completed_at.replace(tzinfo=UTC).timestamp()


def test_100_leaves_get_every_exact_aggregation_for_20_rounds(
    aggregator, branch, leaf_client, counts, server_errors, tmp_path, record_property, capsys
):
    leaves, rounds, shapes = 100, 20, [(64, 32), (32,), (32, 10), (10,)]
    ensure_fd_limit(4 * leaves + 256)
    credentials = branch(leaves=leaves, target=leaves)
    branch_id = credentials[0].branch_id
    started = time.monotonic()
    clients = [leaf_client(c, wait_connected=False) for c in credentials]  # taking turns with the server's checks
    for leaf in credentials:
        wait_until_connected(aggregator, leaf, timeout_s=60)
    connected_s = time.monotonic() - started
    rng = np.random.default_rng(2024)
    seen: list[str] = []
    latencies, fan_out, round_times = [], [], []
    with ThreadPoolExecutor(max_workers=leaves, thread_name_prefix="leaf") as pool:
        for round_number in range(1, rounds + 1):
            contributions = [(float(rng.integers(1, 1000)), _layers(rng, shapes)) for _ in range(leaves)]
            last = round_number == rounds
            sampled = set(range(leaves)) if last else {(round_number * 7 + k) % leaves for k in range(5)}
            folders = [tmp_path / f"round-{round_number}" / f"leaf-{i}" for i in range(leaves)]
            for folder in folders:
                folder.mkdir(parents=True)
            futures = [
                pool.submit(_leaf_round, clients[i], folders[i], *contributions[i], download=i in sampled)
                for i in range(leaves)
            ]
            results = _gather(futures, QUEUE_TIMEOUT_S * 2)
            capsys.readouterr()  # drops the clients' own prints ("downloaded file ...") from the report
            recorded, completed_at = _completed(aggregator, branch_id, round_number)
            ids = {result.aggregation_id for result in results}
            assert ids == {recorded}, f"round {round_number}: leaves got {ids}, the server finished {recorded}"
            assert recorded not in seen
            seen.append(recorded)
            expected = weighted_mean_float64(contributions)
            for index in sampled:
                _assert_exact(results[index].download, expected)
            last_upload = max(result.upload_started for result in results)
            last_notified = max(result.notified for result in results)
            latencies.append(last_notified - last_upload)
            fan_out.append(max(result.notified_wall for result in results) - completed_at)
            round_times.append(last_notified - min(result.upload_started for result in results))
    wall_s = time.monotonic() - started

    time.sleep(0.5)
    assert [i for i, client in enumerate(clients) if not client.queue.empty()] == []  # no late duplicates
    assert aggregator.context.service.open_round(branch_id) == (rounds + 1, [])
    assert aggregator.context.connections.connected_leaves(branch_id) == {c.id for c in credentials}
    statuses = counts.statuses()
    assert counts.escaped == [] and counts.server_errors() == {}
    assert set(statuses) <= {200, 201}, f"a client call was refused: {counts.http}"
    assert counts.http[("POST", "/api/v1/file/upload", 201)] == leaves * rounds
    assert counts.websocket["accepted"] == leaves  # no leaf had to reconnect
    assert server_errors.records == []
    _report(record_property, "100 leaves x 20 rounds", {
        "leaves": leaves,
        "rounds": rounds,
        "parameters_per_model": sum(int(np.prod(shape)) for shape in shapes),
        "connect_s": round(connected_s, 2),
        "wall_s": round(wall_s, 2),
        "round_s": percentiles(round_times),
        "last_upload_sent_to_last_leaf_notified_s": percentiles(latencies),
        "aggregated_to_last_leaf_notified_s": percentiles(fan_out),
        "responses": dict(sorted(statuses.items())),
    })


# --- latency of one call ---------------------------------------------------------------------------


def test_the_server_answers_kept_alive_connections_without_waiting_for_delayed_acks(
    aggregator, branch, leaf_client, record_property
):
    """Without TCP_NODELAY on the accepted socket, each response on a kept-alive connection waits for the
    client's delayed ACK (~40 ms on Linux) before its body leaves: every call of every leaf paid it (48 ms a
    call, measured). The socket option is what is asserted; the timings are reported, not judged."""
    (leaf,) = branch(leaves=1)
    client = leaf_client(leaf)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        client.get_run_details()  # GET /api/v1/run/{branch}, on the client's kept-alive requests session
        timings.append(time.perf_counter() - started)
    _report(record_property, "one official-client call on a kept-alive connection", {"s": percentiles(timings)})
    sockets = [connection.transport.get_extra_info("socket")
               for connection in list(aggregator._server.server_state.connections)]
    assert sockets, "the client's kept-alive connection is open"
    assert [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets] == [1] * len(sockets)


def test_websocket_notifications_are_sent_uncompressed(aggregator, branch):
    """The official client offers permessage-deflate (the `websockets` default); the server declines it,
    so a notification costs no compression on either side and a connection holds no zlib context."""
    (leaf,) = branch(leaves=1)
    ticket = httpx.post(f"{aggregator.url}/api/v1/ws/ticket", headers=auth_headers(leaf), timeout=10).json()["data"]
    url = (f"{aggregator.url.replace('http://', 'ws://')}/api/v1/ws?ticket={ticket['ticket_id']}"
           f"&request_id={ticket['request_id']}")
    with connect(url, open_timeout=10) as websocket:  # offers permessage-deflate by default
        assert "permessage-deflate" in websocket.request.headers.get("Sec-WebSocket-Extensions", "")
        assert websocket.response.headers.get("Sec-WebSocket-Extensions") is None


# --- 1,000 idle WebSockets while a 5-leaf branch keeps aggregating --------------------------------


def _soak_seconds() -> float:
    return float(os.environ.get("FEDGROVE_SOAK_SECONDS", "60"))


def _official_client(url: str, leaf: LeafCredentials, output_dir: Path) -> Client:
    return take_turns_checking_archives(Client(
        Credentials(**vars(leaf)),
        api_config=APIConfig(host=url, ssl=False),
        retry_config=RetryConfig(max_retries=0, total_timeout=30),
        output_dir=str(output_dir),
    ))


def _credentials(created: dict) -> list[LeafCredentials]:
    return [LeafCredentials(**leaf) for leaf in created["leaves"]]


def _wait_connected(server: MeasuredAggregator, branch_id: str, expected: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(server.admin("GET", f"/branches/{branch_id}")["leaves_connected"]) < expected:
        assert time.monotonic() < deadline, f"fewer than {expected} leaves of {branch_id} connected in {timeout_s} s"
        time.sleep(0.05)


def _completed_times(server: MeasuredAggregator, branch_id: str) -> dict[str, float]:
    """When each finished aggregation of the branch finished (epoch seconds), from the server's database."""
    engine = make_engine(f"sqlite:///{server.data_dir / 'aggregator.db'}")
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(Aggregation.id, Aggregation.completed_at)
                .where(Aggregation.branch_id == branch_id, Aggregation.status.in_(("complete", "expired")))
            )
            return {row.id: row.completed_at.replace(tzinfo=UTC).timestamp() for row in rows}
    finally:
        engine.dispose()


def _wait_for_notifications(idle: IdleSockets, branch_id: str, expected: int, timeout_s: float = 30) -> None:
    """Until every idle socket of the branch has received `expected` frames (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    sockets = [socket for socket in idle.sockets if socket.leaf.branch_id == branch_id]
    while any(len(socket.received) < expected for socket in sockets) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def soak_server(tmp_path: Path) -> Iterator[MeasuredAggregator]:
    ensure_fd_limit(4096)  # before the server starts: it inherits the limit
    (tmp_path / "server").mkdir()
    server = MeasuredAggregator(tmp_path / "server" / "data", log=tmp_path / "server" / "aggregator.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_1000_idle_websockets_stay_open_while_a_5_leaf_branch_keeps_aggregating(
    soak_server, tmp_path, record_property, capsys
):
    server = soak_server
    idle_count, busy_leaves, soak_s = 1000, 5, _soak_seconds()
    # The busy branch has 500 more leaves than its target: they never upload, each holds one idle socket.
    busy = _credentials(server.admin("POST", "/branches", json={"tree": "soak", "branch": "busy",
                                                                 "leaves": busy_leaves + 500, "target": busy_leaves}))
    quiet = _credentials(server.admin("POST", "/branches", json={"tree": "soak", "branch": "quiet", "leaves": 500}))
    busy_id, quiet_id = busy[0].branch_id, quiet[0].branch_id
    clients = [_official_client(server.url, leaf, tmp_path / "downloads" / leaf.name) for leaf in busy[:busy_leaves]]
    rss_idle = server.rss()
    try:
        _wait_connected(server, busy_id, busy_leaves)
        # Half of the idle sockets belong to the 500 leaves of a branch that never aggregates, the other half
        # to the busy branch's 500 leaves that never upload, so they receive every aggregation too. One socket
        # a leaf: a leaf may hold two at once.
        idle_leaves = quiet + busy[busy_leaves:]
        idle = IdleSockets(server.url, idle_leaves)
        opening = time.monotonic()
        with idle.opened(), RssSampler(server.pid) as rss:
            open_s = time.monotonic() - opening
            assert sum(idle.still_open()) == idle_count
            rss_open = server.rss()
            fds_open = server.open_files()
            assert len(server.admin("GET", f"/branches/{quiet_id}")["leaves_connected"]) == len(quiet)

            rounds = _run_rounds_for(clients, tmp_path, soak_s, drop_output=capsys.readouterr)

            _wait_for_notifications(idle, busy_id, len(rounds))
            still_open = idle.still_open()
            closed = [s.closed_early for s, is_open in zip(idle.sockets, still_open, strict=True) if not is_open]
            assert closed == [], f"{len(closed)} idle connections closed early, e.g. {closed[:3]}"
            slowest_pong_s = idle.ping_all()
            rss_end = server.rss()
        assert idle.ticket_statuses == {200: idle_count}
    finally:
        for client in clients:
            client.close()

    ids = [r.aggregation_id for r in rounds]
    assert len(ids) == len(set(ids)) and len(ids) >= 3, f"only {len(ids)} rounds in {soak_s} s"
    status = server.admin("GET", f"/branches/{busy_id}")
    assert status["aggregations_completed"] == len(ids) and status["last_aggregation_id"] == ids[-1]
    assert status["open_round"] == len(ids) + 1 and status["uploads_in_open_aggregation"] == 0
    completed_at = _completed_times(server, busy_id)
    notified_at: dict[str, list[float]] = {r.aggregation_id: [r.last_notified_wall] for r in rounds}
    for idle_socket in idle.sockets:
        got = [json.loads(text) for _at, text in idle_socket.received]
        if idle_socket.leaf.branch_id == quiet_id:
            assert got == [], "a connection of the quiet branch was sent something"
            continue
        assert [m["body"]["aggregation_id"] for m in got] == ids, "an idle connection missed or repeated an id"
        assert {m["message_type"] for m in got} == {"aggregation_status"}
        for (at, _text), message in zip(idle_socket.received, got, strict=True):
            notified_at[message["body"]["aggregation_id"]].append(at)
    fan_out = [max(notified_at[r.aggregation_id]) - completed_at[r.aggregation_id] for r in rounds]

    log = server.log.read_text(errors="replace")
    responses = access_log_statuses(log)
    assert {key: n for key, n in responses.items() if key[2] >= 500} == {}
    assert {key[2] for key in responses} <= {200, 201}, f"a request was refused: {responses}"
    assert responses[("POST", "/api/v1/file/upload", 201)] == busy_leaves * len(ids)
    assert "Traceback" not in log and "internal server error" not in log.lower()
    _report(record_property, "1000 idle websockets soak", {
        "soak_s": soak_s,
        "idle_connections": idle_count,
        "open_1000_s": round(open_s, 2),
        "rounds": len(ids),
        "round_s": percentiles([r.last_notified - r.first_upload for r in rounds]),
        "last_upload_sent_to_last_leaf_notified_s": percentiles([r.last_notified - r.last_upload for r in rounds]),
        "aggregated_to_last_of_505_notified_s": percentiles(fan_out),
        "slowest_pong_at_end_s": round(slowest_pong_s, 3),
        "server_rss_mb": {"idle": round(rss_idle / MB, 1), "1000_open": round(rss_open / MB, 1),
                          "end": round(rss_end / MB, 1), "peak": round(rss.peak / MB, 1)},
        "server_fds_with_1000_open": fds_open,
        "responses": {f"{m} {r} {s}": n for (m, r, s), n in sorted(responses.items())},
    })


@dataclass(frozen=True)
class SoakRound:
    aggregation_id: str
    first_upload: float
    last_upload: float
    last_notified: float
    last_notified_wall: float


def _run_rounds_for(
    clients: list[Client], tmp_path: Path, seconds: float, *, drop_output: Callable[[], object]
) -> list[SoakRound]:
    """Rounds back to back until `seconds` have passed; every leaf gets and downloads every aggregation."""
    rng = np.random.default_rng(5)
    shapes = [(32, 16), (16,)]
    rounds: list[SoakRound] = []
    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(max_workers=len(clients), thread_name_prefix="busy-leaf") as pool:
        while time.monotonic() < deadline and len(rounds) < 10_000:
            contributions = [(float(rng.integers(1, 100)), _layers(rng, shapes)) for _ in clients]
            folders = [tmp_path / "rounds" / f"{len(rounds)}-{i}" for i in range(len(clients))]
            for folder in folders:
                folder.mkdir(parents=True)
            futures = [pool.submit(_leaf_round, client, folder, *contribution, download=True)
                       for client, folder, contribution in zip(clients, folders, contributions, strict=True)]
            results = _gather(futures, QUEUE_TIMEOUT_S * 2)
            drop_output()
            ids = {result.aggregation_id for result in results}
            assert len(ids) == 1 and not ids & {r.aggregation_id for r in rounds}, f"round {len(rounds) + 1}: {ids}"
            expected = weighted_mean_float64(contributions)
            for result in results:
                _assert_exact(result.download, expected)
            rounds.append(SoakRound(
                aggregation_id=ids.pop(),
                first_upload=min(r.upload_started for r in results),
                last_upload=max(r.upload_started for r in results),
                last_notified=max(r.notified for r in results),
                last_notified_wall=max(r.notified_wall for r in results),
            ))
    return rounds

