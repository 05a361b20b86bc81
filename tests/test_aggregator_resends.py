"""A leaf that sends the same archive as last round: a retry while it has not downloaded that round's
aggregate, new data once it has (issue #17, item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from branchkey import Client

from aggregator.server import ServerThread


def _save(client: Client, folder: Path, kind: str, value: float) -> str:
    if kind == "analytics":
        return client.save_fields({"count_n": np.array([value])}, file_path=str(folder))
    return client.save_weights(str(folder), 1.0, [np.full(3, value, np.float32)])


def _aggregate(client: Client, aggregation_id: str, kind: str) -> np.ndarray:
    with np.load(client.file_download(aggregation_id), allow_pickle=False) as archive:
        return archive["count_n" if kind == "analytics" else "layer_0"]


@pytest.mark.parametrize("kind", ["analytics", "weights"])
def test_the_same_archive_sent_again_after_downloading_the_aggregate_is_counted_in_the_next_round(
    aggregator: ServerThread, branch, leaf_client, tmp_path: Path, kind: str
) -> None:
    """Round 2 hung: leaf A's unchanged archive was answered with round 1's file id and not counted."""
    credentials = branch(leaves=2)
    first, second = (leaf_client(c) for c in credentials)
    first_id = first.file_upload(_save(first, tmp_path / "a1", kind, 5.0))
    second.file_upload(_save(second, tmp_path / "b1", kind, 7.0))
    round_one = first.queue.get(timeout=10)
    second.queue.get(timeout=10)
    for client in (first, second):
        np.testing.assert_array_equal(_aggregate(client, round_one, kind), 12.0 if kind == "analytics" else 6.0)

    again = first.file_upload(_save(first, tmp_path / "a2", kind, 5.0))

    assert again != first_id
    assert aggregator.context.service.open_round(credentials[0].branch_id) == (2, [credentials[0].id])
    second.file_upload(_save(second, tmp_path / "b2", kind, 8.0))
    round_two = first.queue.get(timeout=10)
    np.testing.assert_array_equal(_aggregate(first, round_two, kind), 13.0 if kind == "analytics" else 6.5)
