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
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from websockets.sync.client import connect

from aggregator.config import AggregatorSettings
from aggregator.db import Branch, PerformanceRecord
from aggregator.registry import LeafCredentials
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


@pytest.mark.parametrize("path", ["/admin/v1/branches", "/admin/v1/branches/{branch_id}/run"])
def test_an_admin_request_without_credentials_is_401_before_its_body_is_read(aggregator, branch, path) -> None:
    (leaf,) = branch(leaves=1)
    branches = _count(aggregator, Branch)

    with PeakRss() as memory:
        response = httpx.post(aggregator.url + path.format(branch_id=leaf.branch_id), timeout=60,
                              content=_json_string_body(64 * MIB), headers={"content-type": "application/json"})

    _refused(response, 401, "missing credentials")
    assert memory.growth < 16 * MIB
    assert _count(aggregator, Branch) == branches
    assert _run_status(aggregator, leaf.branch_id) == ("start", 1)


@pytest.mark.parametrize("path", ["/admin/v1/branches", "/admin/v1/branches/{branch_id}/run"])
def test_an_admin_request_with_malformed_json_and_no_credentials_is_401_not_400(aggregator, branch, path) -> None:
    (leaf,) = branch(leaves=1)

    response = httpx.post(aggregator.url + path.format(branch_id=leaf.branch_id), content=b"{" * 10,
                          headers={"content-type": "application/json"})

    _refused(response, 401, "missing credentials")
    assert _count(aggregator, Branch) == 1
    assert _run_status(aggregator, leaf.branch_id) == ("start", 1)


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


# --- JSON the server could not store or answer with -----------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("data", '"\\ud800"'),
    ("data", '{"\\udfff": 1}'),
    ("data", '[[{"loss": "a\\ud800b"}]]'),
    ("aggregation_id", '"\\ud800"'),
    ("branch_id", '"\\ud800"'),
])
def test_metrics_with_a_lone_surrogate_are_400_and_not_stored(aggregator, branch, field, value) -> None:
    (leaf,) = branch(leaves=1)
    body = {"mode": '"train"', "branch_id": json.dumps(leaf.branch_id), "data": '"ok"', field: value}  # JSON texts

    response = httpx.post(aggregator.url + PERFORMANCE, headers=auth_headers(leaf),
                          content="{" + ", ".join(f'"{key}": {text}' for key, text in body.items()) + "}")

    _refused(response, 400, f"{field} {SURROGATE}")
    metrics = _metrics(aggregator, leaf.branch_id)
    assert (metrics.status_code, metrics.json()) == (200, {"metrics": [], "next_after": None})


def test_a_field_name_with_a_lone_surrogate_is_400(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)

    response = httpx.post(aggregator.url + PERFORMANCE, headers=auth_headers(leaf),
                          content=f'{{"mode": "train", "branch_id": "{leaf.branch_id}", "\\ud800": 1}}')

    _refused(response, 400, "a field name of the body is not valid UTF-8 text (it holds a lone UTF-16 surrogate); "
                            "send UTF-8 text")
    assert _count(aggregator, PerformanceRecord) == 0


def test_metrics_text_spelling_a_lone_surrogate_are_stored_and_shown_as_text(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    data = '{"\\ud800": 1}'  # valid UTF-8 text, which parses to an object no JSON answer can hold

    response = httpx.post(aggregator.url + PERFORMANCE, headers=auth_headers(leaf),
                          json={"mode": "train", "branch_id": leaf.branch_id, "data": data})

    assert response.status_code == 201, response.text
    metrics = _metrics(aggregator, leaf.branch_id)
    assert metrics.status_code == 200, metrics.text
    assert [row["data"] for row in metrics.json()["metrics"]] == [data]


def test_metrics_without_a_branch_id_are_400_naming_it(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)

    response = httpx.post(aggregator.url + PERFORMANCE, headers=auth_headers(leaf), json={"mode": "train"})

    _refused(response, 400, "missing branch_id: send the id of the leaf's branch")
    assert _count(aggregator, PerformanceRecord) == 0


@pytest.mark.parametrize(("extra", "message"), [
    ('"model_config": {"a": ' + "[" * 300 + "]" * 300 + "}",
     "model_config nests deeper than 32 levels; send a flatter value"),
    ('"model_config": {"a": ' + "[" * 32 + "]" * 32 + "}",
     "model_config nests deeper than 32 levels; send a flatter value"),
    ('"model_config": {"x": "\\ud800"}', f"model_config {SURROGATE}"),
    ('"model_config": {"lr": NaN}', "model_config holds NaN, Infinity or a number too large for JSON; "
                                    "send finite numbers"),
    ('"model_config": {"lr": 1e400}', "model_config holds NaN, Infinity or a number too large for JSON; "
                                      "send finite numbers"),
    ('"round_timeout_s": Infinity', "round_timeout_s holds NaN, Infinity or a number too large for JSON; "
                                    "send finite numbers"),
    ('"round_timeout_s": NaN', "round_timeout_s holds NaN, Infinity or a number too large for JSON; "
                               "send finite numbers"),
], ids=["300-deep", "33-deep", "surrogate", "nan", "overflow", "infinite-timeout", "nan-timeout"])
def test_a_branch_whose_config_leaves_could_not_read_is_400_and_not_created(aggregator, extra, message) -> None:
    body = json.dumps(_new_branch_body())[:-1] + ", " + extra + "}"

    response = httpx.post(aggregator.url + "/admin/v1/branches", headers=_admin(aggregator), content=body)

    _refused(response, 400, message)
    assert _count(aggregator, Branch) == 0


def test_a_model_config_32_levels_deep_is_created_and_served_to_the_leaves(aggregator) -> None:
    model_config = {"a": json.loads("[" * 31 + "]" * 31), "lr": 0.01, "name": "résumé ✓"}
    created = httpx.post(aggregator.url + "/admin/v1/branches", headers=_admin(aggregator),
                         json=_new_branch_body(model_config=model_config, round_timeout_s=1e300))
    assert created.status_code == 201, created.text
    (leaf,) = created.json()["leaves"]

    config = httpx.get(f"{aggregator.url}/api/v1/config/branch/{leaf['branch_id']}",
                       headers={"Authorization": f"Bearer {leaf['id']}:{leaf['session_token']}"})

    assert config.status_code == 200, config.text
    assert config.json()["data"]["model_config"] == model_config
    assert config.json()["data"]["service"]["config"]["round_timeout_s"] == 1e300


def test_a_run_status_change_with_a_bad_body_is_400_and_changes_nothing(aggregator, branch) -> None:
    (leaf,) = branch(leaves=1)
    url = f"{aggregator.url}/admin/v1/branches/{leaf.branch_id}/run"

    _refused(httpx.post(url, headers=_admin(aggregator), content=b"{"), 400, "body is not JSON")
    _refused(httpx.post(url, headers=_admin(aggregator), json=["stop"]), 400, "body is not a JSON object")
    _refused(httpx.post(url, headers=_admin(aggregator), json={"status": "go"}), 400,
             "invalid request: body.status: Input should be 'start', 'pause' or 'stop'")
    assert _run_status(aggregator, leaf.branch_id) == ("start", 1)
    assert httpx.post(url, headers=_admin(aggregator), json={"status": "pause"}).json() == {
        "run_status": "pause", "run_number": 1}


# --- WebSocket ------------------------------------------------------------------------------------


def _ws_url(server: ServerThread, leaf: LeafCredentials) -> str:
    data = httpx.post(f"{server.url}/api/v1/ws/ticket", headers=auth_headers(leaf)).json()["data"]
    return (f"{server.url.replace('http://', 'ws://')}/api/v1/ws"
            f"?ticket={data['ticket_id']}&request_id={data['request_id']}")


def test_a_binary_frame_from_a_leaf_is_ignored_and_the_socket_keeps_serving(aggregator, branch, caplog) -> None:
    (leaf,) = branch(leaves=1)
    caplog.set_level(logging.INFO)

    with connect(_ws_url(aggregator, leaf), open_timeout=10) as websocket:
        websocket.send(b"\x00\xff")
        websocket.send("and a text frame")
        paused = httpx.post(f"{aggregator.url}/admin/v1/branches/{leaf.branch_id}/run", headers=_admin(aggregator),
                            json={"status": "pause"})
        assert paused.status_code == 200, paused.text

        assert json.loads(websocket.recv(timeout=10)) == {"message_type": "run_status",
                                                          "body": {"run_status": "pause"}}
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


# --- API schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_the_api_schema_and_its_pages_are_not_served(aggregator, path) -> None:
    _refused(httpx.get(aggregator.url + path), 404, "not found")


@pytest.mark.parametrize("aggregator_settings", [{"serve_api_docs": True}], indirect=True)
def test_the_api_schema_is_served_when_the_setting_asks_for_it(aggregator) -> None:
    schema = httpx.get(aggregator.url + "/openapi.json")

    assert schema.status_code == 200
    assert "/admin/v1/branches" in schema.json()["paths"]
    assert httpx.get(aggregator.url + "/docs").status_code == 200
