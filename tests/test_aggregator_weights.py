"""Uploads that averaged to a silently wrong aggregate are refused with a message (issue #17, item 10):
integer layers (uint64 2**64-1 from two leaves averaged to 0, int8 1 and 2 to 1), weightings outside the
documented range (5e-324 turned 0.3 into 0.0), and, where a branch asks for it, one leaf's dominance."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from aggregator.server import ServerThread
from tests.fedavg_oracle import weighted_mean_float64
from tests.upload_helpers import npz_bytes, upload, weights

FIX = "(fix: send the number of samples the leaf trained on)"


@pytest.mark.parametrize(
    ("weighting", "layer", "message"),
    [
        (1.0, np.array([2**64 - 1], np.uint64), "uint64"),
        (1.0, np.array([2**62 + 1], np.int64), "int64"),
        (1.0, np.array([1], np.int8), "int8"),
        (5e-324, np.array([0.3], np.float32), f"expected a weighting between 1e-06 and 1e+15, got 4.94066e-324 {FIX}"),
        (1e308, np.array([0.0], np.float32), f"expected a weighting between 1e-06 and 1e+15, got 1e+308 {FIX}"),
    ],
    ids=["uint64", "int64", "int8", "subnormal-weighting", "huge-weighting"],
)
def test_an_upload_that_would_average_wrongly_is_400(
    aggregator: ServerThread, weighting: float, layer: np.ndarray, message: str
) -> None:
    _tree, _branch, (leaf, _other) = aggregator.context.registry.create_branch(tree="t", branch="w", leaves=2)
    if layer.dtype.kind in "iu":
        message = (f"expected layer_0 in float16, float32 or float64, got {layer.dtype} (fix: send the model's "
                   "weights as floats; an integer buffer, a batch counter say, is no weight to average)")

    response = upload(aggregator.url, leaf, npz_bytes(weights(weighting, [layer])))

    assert (response.status_code, response.json()) == (400, {"error": message})


def test_a_branch_with_max_weight_share_lets_no_leaf_dominate_its_round(aggregator: ServerThread) -> None:
    """Either order: a dominating upload already in the round is taken out once the round would finish; one
    that would finish it is refused. A weighting of 1e12 with zero layers wiped out honest leaves' 100s."""
    _tree, branch_id, (honest, dominant, other) = aggregator.context.registry.create_branch(
        tree="t", branch="share", leaves=3, max_weight_share=0.5
    )
    ones, zeros = [np.ones(3, np.float32)], [np.zeros(3, np.float32)]
    for leaf, weighting, layers in ((honest, 100.0, ones), (dominant, 1e12, zeros), (other, 100.0, ones)):
        assert upload(aggregator.url, leaf, npz_bytes(weights(weighting, layers))).status_code == 201
    assert aggregator.context.service.open_round(branch_id) == (1, sorted([honest.id, other.id]))

    refused = upload(aggregator.url, dominant, npz_bytes(weights(1e12, zeros)))
    assert (refused.status_code, refused.json()) == (400, {"error": (
        "expected a weighting of at most 0.5 of the round's total weighting (the branch's max_weight_share), got "
        f"1e+12 of 1e+12, a share of 1 {FIX}")})

    assert upload(aggregator.url, dominant, npz_bytes(weights(150.0, zeros))).status_code == 201
    status = httpx.get(f"{aggregator.url}/admin/v1/branches/{branch_id}",
                       headers={"Authorization": f"Bearer {aggregator.context.admin_token}"}).json()
    with aggregator.context.blobs.open_local(status["last_aggregation_id"]) as path, np.load(path) as archive:
        expected = weighted_mean_float64([(100.0, ones), (150.0, zeros), (100.0, ones)])
        np.testing.assert_allclose(archive["layer_0"], expected[0], rtol=1e-6)
