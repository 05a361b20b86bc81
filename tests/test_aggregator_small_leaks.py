"""Small leaks (issue #17, item 11): files others could read, secrets in the access log, a download link's
host taken from the request, a ticket's cost growing with the number of live tickets."""

from __future__ import annotations

import logging
import stat
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
from websockets.sync.client import connect

from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread
from aggregator.tickets import TicketBook
from tests.upload_helpers import auth_headers, npz_bytes, upload, weights


def _settings(data_dir: Path, **overrides: object) -> AggregatorSettings:
    return AggregatorSettings(data_dir=data_dir, port=0, _env_file=None, **overrides)


def _aggregate_link(server: ServerThread, **headers: str) -> str:
    """Finish a one-leaf round and ask for its aggregate's download link."""
    (leaf,) = server.context.registry.create_branch(tree="t", branch="b", leaves=1)[2]
    file_id = server.context.reports.status(leaf.branch_id, connected_leaf_ids=set())["last_aggregation_id"]
    if file_id is None:
        assert upload(server.url, leaf, npz_bytes(weights(1.0, [np.ones(3, np.float32)]))).status_code == 201
        file_id = server.context.reports.status(leaf.branch_id, connected_leaf_ids=set())["last_aggregation_id"]
    response = httpx.get(f"{server.url}/api/v1/file/download/{file_id}", headers={**auth_headers(leaf), **headers})
    assert response.status_code == 200, response.text
    return response.json()["data"]["download_url"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_folder_and_the_database_are_the_owners_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "aggregator"
    data_dir.mkdir(mode=0o755)
    with ServerThread(_settings(data_dir)) as server:
        _aggregate_link(server)
        database = sorted(path.name for path in data_dir.glob("aggregator.db*"))

        assert database == ["aggregator.db", "aggregator.db-shm", "aggregator.db-wal"]
        assert {name: _mode(data_dir / name) for name in database} == dict.fromkeys(database, 0o600)
        assert _mode(data_dir) == 0o700


def test_the_access_log_shows_no_ticket_and_no_link_signature(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    with ServerThread(_settings(tmp_path / "aggregator"), log_level="info") as server:
        link = _aggregate_link(server)
        assert httpx.get(link).status_code == 200
        (leaf,) = server.context.registry.create_branch(tree="t", branch="ws", leaves=1)[2]
        ticket = httpx.post(f"{server.url}/api/v1/ws/ticket", headers=auth_headers(leaf)).json()["data"]
        query = f"ticket={ticket['ticket_id']}&request_id={ticket['request_id']}"
        url = f"{server.url.replace('http', 'ws')}/api/v1/ws?{query}"
        with connect(url, open_timeout=10) as websocket:
            websocket.ping().wait(timeout=10)

    logged = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("uvicorn"))
    assert "/blobs/" in logged and "/api/v1/ws" in logged  # the requests were logged
    for secret in (parse_qs(urlsplit(link).query)["signature"][0], ticket["ticket_id"], ticket["request_id"]):
        assert secret not in logged


def test_a_download_link_names_the_configured_public_url_not_the_requests_host(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "aggregator", public_url="https://aggregator.example.org/fedgrove")
    with ServerThread(settings) as server:
        link = _aggregate_link(server, host="attacker.example")

    assert link.startswith("https://aggregator.example.org/fedgrove/blobs/")


def _lines_run_to_issue_a_ticket(book: TicketBook) -> int:
    lines = 0

    def count(frame, event, _arg):  # type: ignore[no-untyped-def]
        nonlocal lines
        lines += event == "line"
        return count

    sys.settrace(count)
    try:
        book.issue(leaf_id="newcomer", branch_id="b")
    finally:
        sys.settrace(None)
    return lines


def test_issuing_a_ticket_costs_the_same_with_10_or_10000_live_tickets() -> None:
    """Counted in lines of Python run, not in time: every issue used to look at every live ticket."""
    few, many = TicketBook(30, per_leaf=4), TicketBook(30, per_leaf=4)
    for index in range(10_000):
        many.issue(leaf_id=f"leaf-{index}", branch_id="b")
        if index < 10:
            few.issue(leaf_id=f"leaf-{index}", branch_id="b")

    assert _lines_run_to_issue_a_ticket(many) == _lines_run_to_issue_a_ticket(few)
