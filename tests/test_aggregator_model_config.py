"""The layers a round takes: those the branch declares, not whatever one leaf sends first; byte order is no
difference (issue #17, item 5). One leaf's float16 or big-endian upload used to block every honest float32
leaf with 409 for the whole round."""

from __future__ import annotations

import httpx
import numpy as np
from sqlalchemy import select

from aggregator.db import Branch
from aggregator.server import ServerThread
from tests.fedavg_oracle import weighted_mean_float64
from tests.upload_helpers import npz_bytes, upload, weights

LAYERS = {"layers": [{"shape": [4, 7], "dtype": "float32"}, {"shape": [7], "dtype": "float32"}]}


def _layers(seed: int, dtype: str = "<f4") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 7)).astype(dtype), rng.normal(size=7).astype(dtype)]


def _aggregate(server: ServerThread, branch_id: str) -> list[np.ndarray]:
    status = httpx.get(f"{server.url}/admin/v1/branches/{branch_id}",
                       headers={"Authorization": f"Bearer {server.context.admin_token}"}).json()
    with server.context.blobs.open_local(status["last_aggregation_id"]) as path, np.load(path) as archive:
        return [archive["layer_0"], archive["layer_1"]]


def test_a_branch_that_declares_its_layers_refuses_a_float16_first_upload_and_averages_the_float32_ones(
    aggregator: ServerThread,
) -> None:
    _tree, branch_id, leaves = aggregator.context.registry.create_branch(
        tree="t", branch="declared", leaves=3, target=2, model_config=LAYERS
    )
    first = upload(aggregator.url, leaves[0], npz_bytes(weights(3.0, _layers(0, "float16"))))

    assert (first.status_code, first.json()) == (409, {"error": (
        "expected layer_0 with shape (4, 7) and dtype float32, as the branch's model configuration declares, got "
        "shape (4, 7) and dtype float16 (fix: send the model the branch was created for)")})
    contributions = [(3.0, _layers(1)), (1.0, _layers(2))]
    for leaf, (weighting, layers) in zip(leaves[1:], contributions, strict=True):
        response = upload(aggregator.url, leaf, npz_bytes(weights(weighting, layers)))
        assert response.status_code == 201, response.text
    for got, expected in zip(_aggregate(aggregator, branch_id), weighted_mean_float64(contributions), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_big_endian_float32_upload_is_averaged_with_little_endian_ones(aggregator: ServerThread) -> None:
    _tree, branch_id, leaves = aggregator.context.registry.create_branch(tree="t", branch="endian", leaves=3)
    contributions = [(2.0, _layers(3, ">f4")), (1.0, _layers(4, "<f4")), (5.0, _layers(5, ">f4"))]

    for leaf, (weighting, layers) in zip(leaves, contributions, strict=True):
        response = upload(aggregator.url, leaf, npz_bytes(weights(weighting, layers)))
        assert response.status_code == 201, response.text

    native = [(weighting, [layer.astype("<f4") for layer in layers]) for weighting, layers in contributions]
    for got, expected in zip(_aggregate(aggregator, branch_id), weighted_mean_float64(native), strict=True):
        assert got.dtype == np.dtype("<f4")
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_declared_layers_the_server_cannot_read_are_400_and_no_branch_is_created(aggregator: ServerThread) -> None:
    body = {"tree": "t", "branch": "unreadable", "leaves": 1,
            "model_config": {"layers": [{"shape": [4, -7], "dtype": "float32"}]}}

    response = httpx.post(f"{aggregator.url}/admin/v1/branches", json=body,
                          headers={"Authorization": f"Bearer {aggregator.context.admin_token}"})

    assert (response.status_code, response.json()) == (400, {"error": (
        "expected model_config.layers to be a list of {\"shape\": [n, ...], \"dtype\": \"float32\"} with "
        "dimensions of 0 or more and a float dtype, got layer 0: {'shape': [4, -7], 'dtype': 'float32'} (fix: "
        "declare each layer's shape and dtype as the leaves send them)")})
    with aggregator.context.sessions() as session:
        assert session.scalars(select(Branch)).all() == []
