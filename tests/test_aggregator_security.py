"""Secrets and access: HTTPS with the official client, no token at rest or in logs, expiring tickets."""

from __future__ import annotations

import logging
import time

import httpx
import numpy as np
import pytest
from branchkey import APIConfig, Client, Credentials, RetryConfig

from sqlalchemy import event

from aggregator.config import AggregatorSettings
from aggregator.db import make_engine, make_session_factory
from aggregator.errors import Unauthorized
from aggregator.registry import Registry
from aggregator.server import ServerThread
from tests.aggregator_fixtures import wait_until_connected
from tests.tls import self_signed_certificate


def test_official_client_federates_over_https_with_a_self_signed_certificate(tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    # The client verifies TLS (ssl=True): requests reads REQUESTS_CA_BUNDLE, the WebSocket's
    # ssl.create_default_context() reads SSL_CERT_FILE.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    settings = AggregatorSettings(
        data_dir=tmp_path / "aggregator", port=0, ssl_certfile=cert, ssl_keyfile=key, _env_file=None
    )
    with ServerThread(settings) as server:
        assert server.url.startswith("https://127.0.0.1:")
        _tree, _branch, credentials = server.context.registry.create_branch(tree="t", branch="tls", leaves=2)
        clients = [
            Client(
                Credentials(**vars(c)),
                api_config=APIConfig(host=server.url, ssl=True),
                retry_config=RetryConfig(max_retries=0),
                output_dir=str(tmp_path / c.name),
            )
            for c in credentials
        ]
        try:
            for c in credentials:
                wait_until_connected(server, c)
            layers = [np.arange(6, dtype=np.float32).reshape(2, 3)]
            for index, client in enumerate(clients):
                client.file_upload(client.save_weights(str(tmp_path / f"w{index}"), 1.0, [layers[0] * index]))
            aggregation_id = clients[0].queue.get(timeout=10)
            with np.load(clients[0].file_download(aggregation_id), allow_pickle=False) as archive:
                np.testing.assert_allclose(archive["layer_0"], layers[0] * 0.5)
        finally:
            for client in clients:
                client.close()
        with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP is not served beside HTTPS
            httpx.get(server.url.replace("https", "http") + "/health")


def test_no_session_token_is_stored_in_the_database_or_written_to_the_logs(
    aggregator, branch, leaf_client, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    credentials = branch(leaves=2)
    clients = [leaf_client(c) for c in credentials]
    for index, client in enumerate(clients):
        client.file_upload(client.save_weights(str(tmp_path / f"w{index}"), 2.0, [np.ones(3, np.float32)]))
    clients[0].file_download(clients[0].queue.get(timeout=10))
    httpx.get(f"{aggregator.url}/api/v1/run/{credentials[0].branch_id}",
              headers={"Authorization": f"Bearer {credentials[0].id}:wrong-{credentials[0].session_token}"})
    data_dir = aggregator.settings.data_dir
    stored = b"".join(path.read_bytes() for path in data_dir.rglob("*") if path.is_file())
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "uploaded" in logged  # the server did log the uploads
    for c in credentials:
        assert c.session_token.encode() not in stored
        assert c.session_token not in logged


def test_a_websocket_ticket_is_single_use_and_expires(aggregator, branch):
    credentials = branch(leaves=1)[0]
    headers = {"Authorization": f"Bearer {credentials.id}:{credentials.session_token}", "LEAF": "true"}
    ticket = httpx.post(f"{aggregator.url}/api/v1/ws/ticket", headers=headers).json()["data"]
    book = aggregator.context.tickets
    assert book.redeem(ticket["ticket_id"], ticket["request_id"]) is not None
    assert book.redeem(ticket["ticket_id"], ticket["request_id"]) is None
    aggregator.context.tickets._ttl_s = 0
    late = httpx.post(f"{aggregator.url}/api/v1/ws/ticket", headers=headers).json()["data"]
    time.sleep(0.01)
    assert book.redeem(late["ticket_id"], late["request_id"]) is None


def test_a_known_leaf_is_authenticated_without_a_database_query_and_a_wrong_token_still_fails(tmp_path):
    """Leaves never change once created, so the registry reads each once: per request, authentication is a
    hash and a constant-time compare. The cached path must refuse a wrong token exactly as the first did."""
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(make_session_factory(engine))
    _tree, _branch, (leaf,) = registry.create_branch(tree="t", branch="cache", leaves=1)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    good, wrong = f"Bearer {leaf.id}:{leaf.session_token}", f"Bearer {leaf.id}:wrong-{leaf.session_token}"
    try:
        first = registry.authenticate(good)
        read_once = len(statements)
        assert registry.authenticate(good) == first
        with pytest.raises(Unauthorized, match="^invalid credentials$"):
            registry.authenticate(wrong)
        assert (read_once, len(statements)) == (1, 1)
        with pytest.raises(Unauthorized, match="^invalid credentials$"):
            registry.authenticate(f"Bearer 00000000-0000-0000-0000-000000000000:{leaf.session_token}")
        assert len(statements) == 2  # an unknown id is looked up every time, never remembered
    finally:
        engine.dispose()
