"""A leaf's WebSocket is cut mid-round: the official client reconnects by itself and still gets the aggregation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from branchkey import APIConfig, Client, Credentials, RetryConfig, WebSocketConfig

from tests.aggregator_fixtures import wait_until_connected


def _cut(server, leaf_id: str, branch_id: str) -> None:
    """Close the server side of the leaf's socket, as a dropped network link would end it."""
    manager = server.context.connections
    connections = [c for c in manager._branches.get(branch_id, set()) if c.leaf_id == leaf_id]
    assert connections, "the leaf was not connected"
    loop = server.loop
    for connection in connections:
        asyncio.run_coroutine_threadsafe(connection.websocket.close(code=1011), loop).result(timeout=5)


def test_leaf_whose_websocket_is_cut_after_uploading_still_receives_the_aggregation(
    aggregator, branch, leaf_client, tmp_path
):
    credentials = branch(leaves=3)
    cut_leaf = Client(
        Credentials(**vars(credentials[0])),
        api_config=APIConfig(host=aggregator.url, ssl=False),
        websocket_config=WebSocketConfig(reconnect_backoff_factor=1.2, reconnect_max_delay=1),
        retry_config=RetryConfig(max_retries=0),
        output_dir=str(tmp_path / "cut"),
    )
    try:
        wait_until_connected(aggregator, credentials[0])
        others = [leaf_client(c) for c in credentials[1:]]
        weights = [np.full((2, 2), float(i), np.float32) for i in range(3)]
        cut_leaf.file_upload(cut_leaf.save_weights(str(tmp_path / "w0"), 1.0, [weights[0]]))
        _cut(aggregator, credentials[0].id, credentials[0].branch_id)
        deadline = time.monotonic() + 5
        while credentials[0].id in aggregator.context.connections.connected_leaves(credentials[0].branch_id):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for index, client in enumerate(others, start=1):
            client.file_upload(client.save_weights(str(tmp_path / f"w{index}"), 1.0, [weights[index]]))
        expected_id = others[0].queue.get(timeout=10)
        assert cut_leaf.queue.get(timeout=15) == expected_id
        with np.load(cut_leaf.file_download(expected_id), allow_pickle=False) as archive:
            np.testing.assert_allclose(archive["layer_0"], np.full((2, 2), 1.0, np.float32))
    finally:
        cut_leaf.close()
