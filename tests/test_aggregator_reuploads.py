"""A leaf uploading again to the open round: its earlier contribution is taken out without reading the
round's other archives again (issue #17, item 6; the rebuild was linear in the leaves: 0.42 s with 40)."""

from __future__ import annotations

import numpy as np

from aggregator.server import ServerThread
from tests.database_backends import on_both_databases
from tests.fedavg_oracle import weighted_mean_float64
from tests.upload_helpers import npz_bytes, upload, weights


def _aggregate(server: ServerThread, branch_id: str) -> np.ndarray:
    aggregate_id = server.context.reports.status(branch_id, connected_leaf_ids=set())["last_aggregation_id"]
    with server.context.blobs.open_local(aggregate_id) as path, np.load(path) as archive:
        return archive["layer_0"]


def _uploaded(server: ServerThread, leaf, weighting: float, values: list[float]) -> str:  # type: ignore[no-untyped-def]
    response = upload(server.url, leaf, npz_bytes(weights(weighting, [np.array(values, np.float32)])))
    assert response.status_code == 201, response.text
    return response.json()["data"]["file_id"]


@on_both_databases
def test_a_reupload_reads_only_the_archive_it_replaces(aggregator: ServerThread) -> None:
    """The other leaf's archive is gone from the store (as a lost disk would leave it): a re-upload that read
    the whole round again failed on it; one that takes out only the replaced contribution does not."""
    _tree, branch_id, leaves = aggregator.context.registry.create_branch(tree="t", branch="reupload", leaves=3)
    other = _uploaded(aggregator, leaves[0], 2.0, [1.0, -3.0])
    _uploaded(aggregator, leaves[1], 1.0, [100.0, 100.0])
    aggregator.context.blobs.delete(other)

    _uploaded(aggregator, leaves[1], 3.0, [5.0, 7.0])
    _uploaded(aggregator, leaves[2], 1.0, [0.5, 0.25])

    expected = weighted_mean_float64([(2.0, [np.array([1.0, -3.0], np.float32)]),
                                      (3.0, [np.array([5.0, 7.0], np.float32)]),
                                      (1.0, [np.array([0.5, 0.25], np.float32)])])
    np.testing.assert_allclose(_aggregate(aggregator, branch_id), expected[0], rtol=1e-6)


@on_both_databases
def test_a_replaced_contribution_that_dwarfed_the_others_leaves_no_trace_in_the_aggregate(
    aggregator: ServerThread,
) -> None:
    """1e30 taken back out of a float64 sum would leave only rounding noise of the small values: such a
    contribution is taken out by folding the round's archives in again, and the result is exact."""
    _tree, branch_id, leaves = aggregator.context.registry.create_branch(tree="t", branch="dwarfed", leaves=2)
    _uploaded(aggregator, leaves[0], 1.0, [1e30, -1e30])
    _uploaded(aggregator, leaves[0], 1.0, [0.1, 0.3])
    _uploaded(aggregator, leaves[1], 3.0, [0.2, 0.7])

    expected = weighted_mean_float64([(1.0, [np.array([0.1, 0.3], np.float32)]),
                                      (3.0, [np.array([0.2, 0.7], np.float32)])])
    np.testing.assert_array_equal(_aggregate(aggregator, branch_id), expected[0])
