"""Federated preprocessing end to end: the real aggregator, the official client, Prefect tasks, 5 leaves in threads.

Checks that every leaf gets the pooled selection, and opens every archive a leaf uploaded (the server keeps
each contribution in its blob folder) to check that it holds only the documented sums over that leaf's
records: nothing per record, nothing over fewer than the minimum number of records.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow
from sqlalchemy import select

from aggregator.config import AggregatorSettings
from aggregator.db import Aggregation, Contribution
from aggregator.registry import LeafCredentials
from fedgrove.data import feature_columns, load_dataset, split_dataset
from fedgrove.federated_stats import (
    MOMENT_SUFFIXES,
    PER_FEATURE_FIELDS,
    SCALAR_FIELDS,
    TAG_FIELDS,
    Coefficients,
    TooFewRecords,
    field_names,
    leaf_records,
    moment_sums,
    newton_sums,
    newton_update,
    pooled_moments,
    standardise,
)
from fedgrove.features import FeatureSelection, select_features
from tasks.federation import LeafSession
from tasks.preprocessing import federated_feature_selection

pytestmark = pytest.mark.slow

COLUMNS = feature_columns()
NAMES = field_names(COLUMNS)
MIN_RECORDS = 10
MOMENT_FIELDS = {f"{name}_{suffix}" for name in NAMES for suffix in MOMENT_SUFFIXES}
NEWTON_FIELDS = set(PER_FEATURE_FIELDS) | set(SCALAR_FIELDS) | set(TAG_FIELDS)


@pytest.fixture
def aggregator_settings(tmp_path: Path) -> AggregatorSettings:
    """A server that keeps every upload and aggregate: this module reads them all back."""
    return AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None, keep_aggregates=0,
                              keep_uploads=True)


@pytest.fixture(scope="module")
def partitions() -> dict[str, pd.DataFrame]:
    _test, parts = split_dataset(load_dataset(), organisations=5, split="dirichlet", seed=0)
    return parts


@pytest.fixture
def federation(branch, leaf_client, tmp_path) -> Callable[[int], tuple[list[LeafCredentials], list[LeafSession]]]:
    def create(leaves: int) -> tuple[list[LeafCredentials], list[LeafSession]]:
        credentials = branch(leaves=leaves, analytics_default_op="sum")
        sessions = []
        for leaf in credentials:
            work_dir = tmp_path / "leaves" / leaf.name
            work_dir.mkdir(parents=True)
            sessions.append(LeafSession(client=leaf_client(leaf), leaf_name=leaf.name, branch_id=leaf.branch_id,
                                        work_dir=work_dir))
        return credentials, sessions

    return create


def run_leaves(sessions: list[LeafSession], frames: list[pd.DataFrame], **options: object) -> list[FeatureSelection]:
    """Each leaf's `federated_feature_selection` inside its own flow run, all at once (as the leaf flows run)."""

    @flow(name="preprocessing-leaf")
    def leaf(index: int) -> FeatureSelection:
        return federated_feature_selection(sessions[index], frames[index], timeout_s=60, **options)

    with ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix="leaf") as pool:
        futures = [pool.submit(contextvars.copy_context().run, leaf, i) for i in range(len(sessions))]
        return [future.result() for future in futures]


def test_five_leaves_over_the_real_server_get_the_pooled_selection_and_upload_only_sums(
    prefect_api, federation, partitions, aggregator
) -> None:
    """One run (11 aggregations, ~10 s here) checked twice: what the leaves got, and what they sent."""
    credentials, sessions = federation(5)
    frames = list(partitions.values())
    selections = run_leaves(sessions, frames, k=4, min_records=MIN_RECORDS)
    assert_every_leaf_got_the_pooled_selection(selections, frames)
    for session in sessions:
        assert not list(session.work_dir.glob("*.npz"))  # the leaf's own copies are removed after upload
    assert_every_uploaded_archive_holds_only_sums(aggregator, credentials, frames)


def assert_every_leaf_got_the_pooled_selection(selections: list[FeatureSelection], frames: list[pd.DataFrame]) -> None:
    pooled = select_features(pd.concat(frames), k=4)
    first = selections[0]
    assert all(selection == first for selection in selections)  # identical, bit for bit
    assert first.method == "federated-lrt"
    assert first.features == pooled.features
    np.testing.assert_allclose(first.means, pooled.means, rtol=1e-6)
    np.testing.assert_allclose(first.stds, pooled.stds, rtol=1e-6)
    np.testing.assert_allclose(first.p_values, pooled.p_values, rtol=1e-6)


def stored_archives(aggregator, branch_id: str) -> tuple[list[Aggregation], list[Contribution], Path]:
    with aggregator.context.sessions() as db:
        aggregations = list(db.scalars(
            select(Aggregation).where(Aggregation.branch_id == branch_id, Aggregation.status == "complete")
            .order_by(Aggregation.round)))
        contributions = list(db.scalars(
            select(Contribution).where(Contribution.aggregation_id.in_([a.id for a in aggregations]))))
    return aggregations, contributions, aggregator.settings.data_dir / "blobs"


def read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def assert_every_uploaded_archive_holds_only_sums(
    aggregator, credentials: list[LeafCredentials], frames: list[pd.DataFrame]
) -> None:
    """Every contribution in the server's blob folder is exactly the documented sums over that leaf's records.

    The Newton sums are recomputed at the coefficients the leaves used, replayed from the stored aggregates
    with the same deterministic update, so the comparison is exact.
    """
    aggregations, contributions, blobs = stored_archives(aggregator, credentials[0].branch_id)
    assert {path.name for path in blobs.iterdir()} == {a.id for a in aggregations} | {c.id for c in contributions}
    assert len(contributions) == 5 * len(aggregations)  # every leaf once per exchange, nothing else stored
    frame_of = {leaf.id: frame for leaf, frame in zip(credentials, frames, strict=True)}
    by_round = {a.id: a.round for a in aggregations}
    pooled = {a.round: read(blobs / a.id) for a in aggregations}
    means, stds, _n = pooled_moments(pooled[1], NAMES)
    coefficients = {2: Coefficients.zeros(len(NAMES))}
    for round_number in range(3, len(aggregations) + 1):
        coefficients[round_number], _step = newton_update(coefficients[round_number - 1], pooled[round_number - 1])
    for contribution in contributions:
        archive = read(blobs / contribution.id)
        values, y = leaf_records(frame_of[contribution.leaf_id], COLUMNS, min_records=MIN_RECORDS)
        assert str(archive.pop("__bk_payload_kind__")) == "federated_analytics"
        assert archive.pop("weighting").tolist() == [0.0]
        round_number = by_round[contribution.aggregation_id]
        if round_number == 1:
            assert set(archive) == MOMENT_FIELDS  # no _min / _max: those would be single records' values
            expected = moment_sums(values, NAMES)
        else:
            assert set(archive) == NEWTON_FIELDS
            X = standardise(values, means, stds)
            expected = newton_sums(X, y, coefficients[round_number], iteration=round_number - 1)
        for name, array in archive.items():
            # one value per feature or per model, never one per record
            assert array.dtype.kind in "if" and array.shape in {(1,), (len(NAMES),)}, name
            if name.endswith("_n"):
                assert array.tolist() == [len(values)] and len(values) >= MIN_RECORDS, name
            if name.endswith("_nan"):
                assert array.tolist() == [0], name
            np.testing.assert_array_equal(array, expected[name], err_msg=name)  # exactly the documented sum


def test_a_leaf_under_min_records_refuses_before_it_uploads_anything(
    prefect_api, federation, partitions, aggregator
) -> None:
    credentials, sessions = federation(1)
    small = next(iter(partitions.values())).head(MIN_RECORDS - 1)
    with pytest.raises(TooFewRecords, match=f"expected at least {MIN_RECORDS} training records"):
        run_leaves(sessions, [small], k=4, min_records=MIN_RECORDS)
    with aggregator.context.sessions() as db:
        assert list(db.scalars(select(Contribution.id))) == []
