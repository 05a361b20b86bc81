"""The HTTP layer against hostile or broken requests: bodies bounded in size and time before anyone is trusted,
JSON the server could not store or answer with refused up front, WebSocket frames of any kind, no API schema
for strangers.

Each test starts the real server (the `aggregator` fixture; `aggregator_settings` is parametrized here for the
few tests that need other settings), drives it over HTTP or WebSocket, and checks the exact answer and that
nothing changed: no branch created, no metrics stored, the open aggregation and the scratch folder as before.
Memory is measured with `PeakRss`: the server runs in a thread of the test process.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from aggregator.config import AggregatorSettings
from aggregator.db import Branch, PerformanceRecord
from aggregator.server import ServerThread
from tests.upload_helpers import MIB, PeakRss, StreamedUpload, auth_headers, branch_state, chunks, upload_headers

PERFORMANCE = "/api/v1/performance/analysis"
TOO_LARGE = "request body is larger than 1048576 bytes"
SURROGATE = "is not valid UTF-8 text (it holds a lone UTF-16 surrogate); send UTF-8 text"


@pytest.fixture
def aggregator_settings(tmp_path: Path, request: pytest.FixtureRequest) -> AggregatorSettings:
    """The default test settings, with what a test passes through `indirect` parametrization on top."""
    overrides = getattr(request, "param", {})
    return AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None, **overrides)


def _refused(response: httpx.Response, status: int, message: str) -> None:
    assert (response.status_code, response.json()) == (status, {"error": message})


def _admin(server: ServerThread) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.context.admin_token}"}


def _count(server: ServerThread, table: type) -> int:
    with server.context.sessions() as session:
        return session.scalar(select(func.count()).select_from(table))


def _run_status(server: ServerThread, branch_id: str) -> tuple[str, int]:
    branch = server.context.registry.branch(branch_id)
    return branch.run_status, branch.run_number


def _metrics(server: ServerThread, branch_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/admin/v1/branches/{branch_id}/metrics", headers=_admin(server))


def _new_branch_body(**fields: object) -> dict:
    return {"tree": "hardening", "branch": f"branch-{uuid.uuid4().hex}", "leaves": 1, **fields}


# --- bodies: bounded before and without trust -----------------------------------------------------


def _json_string_body(size: int, prefix: bytes = b'{"tree": "') -> Iterator[bytes]:
    """A JSON object whose first value is a string of `size` bytes, produced as it is sent."""
    yield prefix
    yield from chunks(size)
    yield b'"}'


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", ["create-branch", "run-status", "performance"])
def test_a_body_over_the_small_limit_is_413_and_not_held_in_memory(aggregator, branch, route, declared) -> None:
    (leaf,) = branch(leaves=1)
    size = 64 * MIB
    if route == "performance":
        path, headers = PERFORMANCE, auth_headers(leaf)
        prefix = f'{{"mode": "train", "branch_id": "{leaf.branch_id}", "data": "'.encode()
    else:
        path = "/admin/v1/branches" if route == "create-branch" else f"/admin/v1/branches/{leaf.branch_id}/run"
        headers, prefix = _admin(aggregator), b'{"status": "'
    headers = {**headers, "content-type": "application/json"}
    if declared:
        headers["content-length"] = str(len(prefix) + size + 2)

    with PeakRss() as memory:
        response = httpx.post(aggregator.url + path, headers=headers, content=_json_string_body(size, prefix),
                              timeout=60)

    assert response.request.headers.get("transfer-encoding") == (None if declared else "chunked")
    _refused(response, 413, TOO_LARGE)
    assert memory.growth < 16 * MIB
    assert (_count(aggregator, Branch), _count(aggregator, PerformanceRecord)) == (1, 0)
    assert _run_status(aggregator, leaf.branch_id) == ("start", 1)


def test_a_body_of_exactly_the_small_limit_is_read(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    envelope = f'{{"mode": "train", "branch_id": "{leaf.branch_id}", "data": ""}}'
    body = envelope.replace('""', '"' + "x" * (MIB - len(envelope)) + '"').encode()
    assert len(body) == MIB

    response = httpx.post(aggregator.url + PERFORMANCE, headers=auth_headers(leaf), content=body)

    _refused(response, 400, "data is larger than 1000000 characters")  # past the body limit, to the data check
    assert _count(aggregator, PerformanceRecord) == 0


def _stalled_request(server: ServerThread, head: bytes, body_start: bytes) -> tuple[bytes, bytes]:
    """Sends the head and the start of a body, then nothing; (the server's status line and headers, its body)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n" + body_start)
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return head_part, body


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", *(f"{key}: {value}" for key, value in headers.items())]
    return "".join(line + "\r\n" for line in lines).encode()


@pytest.mark.parametrize("aggregator_settings", [{"body_idle_timeout_s": 1}], indirect=True)
@pytest.mark.parametrize("route", ["upload", "performance"])
def test_a_body_that_stops_arriving_is_408_and_leaves_no_scratch_file(aggregator, branch, route) -> None:
    leaves = branch(leaves=3)
    if route == "upload":
        body = StreamedUpload(4 * MIB)
        headers = {**upload_headers(leaves[1], bytes(body.file_bytes)), "content-type": body.content_type,
                   "content-length": str(len(body))}
        path, body_start = "/api/v1/file/upload", next(iter(body)) + bytes(MIB)
    else:
        path, body_start = PERFORMANCE, b'{"mode": "train", "data": "'
        headers = {**auth_headers(leaves[1]), "content-type": "application/json", "content-length": "1000"}

    head, answer = _stalled_request(aggregator, _request_head(path, headers), body_start)

    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in head.lower()
    assert json.loads(answer) == {"error": "request body stalled: nothing arrived for 1 s; send it again"}
    state = branch_state(aggregator, leaves[0].branch_id)
    assert (state.open_round, state.blobs, state.scratch) == ((1, []), frozenset(), frozenset())
    assert _count(aggregator, PerformanceRecord) == 0


