"""What one upload may make the server hold: the running aggregate is bounded, not only the archive's
inflated size (issue #17, item 2). The server runs in a thread of this process, so `PeakRss` sees it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread
from tests.upload_helpers import MIB, PeakRss, branch_state, npz_bytes, upload, weights

LIMIT = 64 * MIB
_ANALYTICS = {"weighting": np.array([0.0]), "__bk_payload_kind__": np.array("federated_analytics")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = AggregatorSettings(data_dir=tmp_path_factory.mktemp("bounded"), port=0, _env_file=None,
                                  max_sum_bytes=LIMIT)
    with ServerThread(settings) as running:
        yield running


def _refusal(needed: int) -> dict[str, str]:
    return {"error": f"expected an archive whose running aggregate fits in {LIMIT} bytes (8 per value), got one "
                     f"needing at least {needed} (fix: send a smaller model, or raise FEDGROVE_MAX_SUM_BYTES on "
                     "the server)"}


@pytest.mark.parametrize("kind", ["layer", "analytics-field"])
def test_int8_zeros_whose_running_aggregate_would_pass_the_limit_are_413_before_they_are_inflated(
    server: ServerThread, kind: str
) -> None:
    """16 MiB of int8 zeros (16 KiB deflated) made the server hold a 128 MiB float64 sum until the round ended."""
    values = np.zeros(16 * MIB, np.int8)
    body = npz_bytes(weights(1.0, [values]) if kind == "layer" else {**_ANALYTICS, "count_n": values})
    _tree, branch_id, (leaf, _other) = server.context.registry.create_branch(tree="t", branch=kind, leaves=2)

    with PeakRss() as memory:
        response = upload(server.url, leaf, body)

    assert (response.status_code, response.json()) == (413, _refusal(8 * values.size))
    assert memory.growth < 16 * MIB
    state = branch_state(server, branch_id)
    assert state.open_round == (1, []) and state.blobs == state.referenced


def test_a_float64_model_of_exactly_the_limit_is_taken_and_one_value_more_is_not(server: ServerThread) -> None:
    _tree, _branch, (leaf, other) = server.context.registry.create_branch(tree="t", branch="edge", leaves=2)
    fits = np.zeros(LIMIT // 8, np.float64)

    assert upload(server.url, leaf, npz_bytes(weights(1.0, [fits]))).status_code == 201
    too_large = upload(server.url, other, npz_bytes(weights(1.0, [fits[:-1], np.zeros(2)])))
    assert (too_large.status_code, too_large.json()) == (413, _refusal(LIMIT + 8))
