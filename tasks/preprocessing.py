"""Federated preprocessing on a leaf: pooled standardisation and LRT feature selection through the server.

The leaf sends sums only (``fedgrove.federated_stats``): one archive of per-feature moment sums, then one
archive of Newton sums per iteration, each through the official client (``save_fields`` + ``file_upload``)
to the branch's open aggregation; the server adds them up (the moments by their bundle suffixes, the Newton
sums by the branch's ``analytics_default_op="sum"``). Preprocessing exchanges are "round 0" in the leaf's
numbering: they come before training round 1, on the same branch, as ordinary aggregations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task

from fedgrove.data import feature_columns, read_partition
from fedgrove.federated_stats import (
    DEFAULT_MAX_ITERATIONS,
    DEFAULT_MIN_RECORDS,
    DEFAULT_TOLERANCE,
    Coefficients,
    PooledSumsMismatch,
    field_names,
    fit_newton,
    leaf_records,
    lrt_selection,
    moment_sums,
    newton_sums,
    pooled_moments,
    standardise,
)
from fedgrove.features import FeatureSelection
from tasks.federation import LeafSession, wait_for_aggregation
from tasks.options import LOCAL, TRANSIENT

FEDERATED_ANALYTICS = "federated_analytics"
_KIND_KEY = "__bk_payload_kind__"
PREPROCESSING_ROUND = 0


@task(name="read-training-records", **LOCAL)
def read_training_records(data_path: Path) -> pd.DataFrame:
    """This organisation's own training partition (features and target), read where it lives."""
    return read_partition(data_path)


@task(name="upload-sums", task_run_name="upload-sums-{step}", **TRANSIENT)
def upload_sums(session: LeafSession, sums: Mapping[str, np.ndarray], *, step: str) -> str:
    """`save_fields` + `file_upload` of one archive of sums. A retried upload replaces the earlier one."""
    path = session.client.save_fields(dict(sums), file_path=str(session.work_dir / f"preprocessing-{step}"))
    session.drain()
    try:
        return session.client.file_upload(path)
    finally:
        Path(path).unlink(missing_ok=True)


@task(name="load-pooled-sums", **TRANSIENT)
def load_pooled_sums(session: LeafSession, aggregation_id: str) -> dict[str, np.ndarray]:
    """Download a combined federated-analytics archive (no pickle) and mark it loaded."""
    path = Path(session.client.file_download(aggregation_id))
    try:
        with np.load(path, allow_pickle=False) as archive:
            fields = {name: archive[name] for name in archive.files}
    finally:
        path.unlink(missing_ok=True)
    kind = fields.pop(_KIND_KEY, None)
    fields.pop("weighting", None)
    if kind is None or str(kind.reshape(-1)[0]) != FEDERATED_ANALYTICS:
        raise PooledSumsMismatch(
            f"expected aggregation {aggregation_id} to be a {FEDERATED_ANALYTICS} archive, got "
            f"{'a federated_learning one' if kind is None else repr(str(kind))} (fix: start preprocessing on a "
            "branch whose open aggregation is empty, before any training round)"
        )
    session.loaded.add(aggregation_id)
    return fields


def exchange_sums(
    session: LeafSession, sums: Mapping[str, np.ndarray], *, step: str, timeout_s: float
) -> dict[str, np.ndarray]:
    """Upload this leaf's sums, wait for the aggregation they complete, return the combined sums."""
    upload_sums(session, sums, step=step)
    aggregation_id = wait_for_aggregation(session, round_number=PREPROCESSING_ROUND, timeout_s=timeout_s)
    return load_pooled_sums(session, aggregation_id)


def federated_feature_selection(
    session: LeafSession,
    frame: pd.DataFrame,
    *,
    k: int = 4,
    min_records: int = DEFAULT_MIN_RECORDS,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    timeout_s: float,
    columns: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> FeatureSelection:
    """Pooled standardisation and the k smallest univariate LRT p-values, computed from the leaves' sums.

    Every leaf of the branch must call this at the same point with the same ``columns`` (default: the data
    set's 30 features, in its order), ``k``, ``max_iterations`` and ``tolerance``; all get the same
    ``FeatureSelection`` (method ``federated-lrt``). Costs 1 + (Newton iterations) aggregations; a leaf with
    fewer than ``min_records`` records raises ``TooFewRecords`` before it sends anything.
    """
    logger = get_run_logger()
    columns = list(columns) if columns is not None else feature_columns()
    if not 1 <= k <= len(columns):
        raise ValueError(f"expected 1 <= k <= {len(columns)} (the number of feature columns), got {k}")
    names = field_names(columns)
    values, y = leaf_records(frame, columns, min_records=min_records)
    started = time.perf_counter()
    combined = exchange_sums(session, moment_sums(values, names), step="moments", timeout_s=timeout_s)
    means, stds, records = pooled_moments(combined, names)
    X = standardise(values, means, stds)
    logger.info("%s: pooled moments of %d columns over %d records", session.leaf_name, len(columns), records)

    def pooled_sums_at(iteration: int, coefficients: Coefficients) -> dict[str, np.ndarray]:
        sums = newton_sums(X, y, coefficients, iteration=iteration)
        return exchange_sums(session, sums, step=f"newton-{iteration}", timeout_s=timeout_s)

    fit = fit_newton(pooled_sums_at, features=len(columns), max_iterations=max_iterations,
                     tolerance=tolerance, records=records)
    selection = lrt_selection(columns, fit=fit, means=means, stds=stds, k=k)
    elapsed = time.perf_counter() - started
    logger.info(
        "%s: federated LRT selection after %d Newton iterations (%.2f s, %.3f s per exchange): %s",
        session.leaf_name, fit.iterations, elapsed, elapsed / (fit.iterations + 1), ", ".join(selection.features),
    )
    return selection
