"""What one authenticated leaf may hold on the WebSocket side: a few tickets, a few sockets, small and few
frames (issue #17, item 3). One leaf opened 80 sockets each buffering a 16 MiB partial frame (+1.1 GB RSS)."""

from __future__ import annotations

import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.upload_helpers import auth_headers


def _ticket(server: ServerThread, leaf: LeafCredentials) -> dict[str, str]:
    response = httpx.post(f"{server.url}/api/v1/ws/ticket", headers=auth_headers(leaf))
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _connect(server: ServerThread, ticket: dict[str, str]) -> ClientConnection:
    query = f"ticket={ticket['ticket_id']}&request_id={ticket['request_id']}"
    url = f"{server.url.replace('http://', 'ws://')}/api/v1/ws?{query}"
    return connect(url, open_timeout=10, max_size=None)


def _close_of(websocket: ClientConnection) -> tuple[int, str]:
    """The code and reason the server closed `websocket` with (waiting for it at most 10 s)."""
    with pytest.raises(ConnectionClosed) as closed:
        websocket.recv(timeout=10)
    assert closed.value.rcvd is not None, "closed without a close frame from the server"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def _sockets_of(server: ServerThread, leaf: LeafCredentials) -> int:
    return sum(1 for connection in server.context.connections.of_leaf(leaf.id))


def test_a_leaf_opening_a_third_websocket_has_its_oldest_closed_with_a_reason(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    sockets = [_connect(aggregator, _ticket(aggregator, leaf)) for _ in range(4)]
    try:
        assert [_close_of(websocket) for websocket in sockets[:2]] == [
            (1008, "replaced by a newer connection of this leaf (at most 2 at once)")
        ] * 2
        deadline = time.monotonic() + 10
        while _sockets_of(aggregator, leaf) != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sockets_of(aggregator, leaf) == 2
        for websocket in sockets[2:]:
            websocket.ping().wait(timeout=10)  # still served
    finally:
        for websocket in sockets:
            websocket.close()


def test_a_leaf_holds_at_most_four_live_tickets_and_the_oldest_go_first(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    tickets = [_ticket(aggregator, leaf) for _ in range(6)]

    for ticket in tickets[:2]:
        with pytest.raises(InvalidStatus) as refused:
            _connect(aggregator, ticket)
        assert refused.value.response.status_code == 403  # closed before the handshake: an invalid ticket
    for ticket in tickets[2:]:
        with _connect(aggregator, ticket) as websocket:
            websocket.ping().wait(timeout=10)


def test_an_inbound_frame_over_4_kib_closes_the_socket_as_too_big(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    with _connect(aggregator, _ticket(aggregator, leaf)) as websocket:
        websocket.send("x" * 4097)
        assert _close_of(websocket)[0] == 1009


def test_a_leaf_flooding_its_socket_with_frames_is_disconnected(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    with _connect(aggregator, _ticket(aggregator, leaf)) as websocket, pytest.raises(ConnectionClosed) as closed:
        for _ in range(1000):
            websocket.send("x")
        websocket.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "too many messages: leaves need not send any")
