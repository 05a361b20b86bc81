"""Fixtures that start the real aggregation server on a loopback port and official clients against it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from branchkey import APIConfig, Client, Credentials, RetryConfig

from aggregator import npy_entry, zip_entry
from aggregator.config import AggregatorSettings
from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.load_helpers import take_turns_checking_archives


@pytest.fixture(params=["whole", "streamed"])
def entry_reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How an in-process server reads archive entries: "whole" (small entries, one libdeflate call) or
    "streamed" (large entries, 64 KiB at a time; forced here for entries of any size). Tests of bad
    archives take this fixture so each bad entry is sent down both paths."""
    if request.param == "streamed":
        monkeypatch.setattr(zip_entry, "WHOLE_ENTRY_BYTES", -1)
    return request.param


@pytest.fixture
def aggregator_settings(tmp_path: Path, database_url: str | None) -> AggregatorSettings:
    """SQLite in the data folder, or PostgreSQL in tests marked `on_both_databases` (tests.database_backends)."""
    return AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, database_url=database_url, _env_file=None)


@pytest.fixture
def aggregator(aggregator_settings: AggregatorSettings) -> Iterator[ServerThread]:
    with ServerThread(aggregator_settings) as server:
        yield server


@pytest.fixture
def branch(aggregator: ServerThread) -> Callable[..., list[LeafCredentials]]:
    counter = iter(range(1_000_000))

    def create(leaves: int = 3, target: int | None = None, **options: object) -> list[LeafCredentials]:
        _tree, _branch, credentials = aggregator.context.registry.create_branch(
            tree="tests", branch=f"branch-{next(counter)}", leaves=leaves, target=target, **options
        )
        return credentials

    return create


@pytest.fixture
def leaf_client(aggregator: ServerThread, tmp_path: Path) -> Iterator[Callable[[LeafCredentials], Client]]:
    """The official branchkey client for a leaf, connected (WebSocket up) before it is returned."""
    clients: list[Client] = []

    def connect(credentials: LeafCredentials, *, wait_connected: bool = True) -> Client:
        client = Client(
            Credentials(**vars(credentials)),
            api_config=APIConfig(host=aggregator.url, ssl=False),
            retry_config=RetryConfig(max_retries=0, total_timeout=30),
            output_dir=str(tmp_path / "downloads" / credentials.name),
        )
        # the server runs in this process: its npy header checks and the clients' take turns (tests.load_helpers)
        take_turns_checking_archives(client, npy_entry._HEADER_LOCK)
        clients.append(client)
        if wait_connected:
            wait_until_connected(aggregator, credentials)
        return client

    yield connect
    for client in clients:
        client.close()


def wait_until_connected(server: ServerThread, credentials: LeafCredentials, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while credentials.id not in server.context.connections.connected_leaves(credentials.branch_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"leaf {credentials.name} did not connect its WebSocket within {timeout_s} s")
        time.sleep(0.02)
