"""What one site reports at the end of a run, and what the federation's summary is built from.

Why this module exists: a site's result crosses a process boundary (in sites mode it is published to the
artifact store by the site's worker and read back by the coordinator) and the in-memory simulation builds
the same object, so the coordinator's summary is one function of these, whatever ran the sites. A result
holds counts, metrics and the agreed preprocessing: never a record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedgrove.encoding import Preprocessing
from fedgrove.metrics import RoundMetrics, SplitMetrics, pool


class SiteResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str
    leaf_name: str | None = None
    records: int  # training records
    test_records: int
    unlabelled: int = 0
    preprocessing: Preprocessing
    federated: list[RoundMetrics]
    alone: list[RoundMetrics]
    parameter_digests: list[str]
    round_seconds: list[float] = []
    preprocessing_seconds: float | None = None  # reading the table and agreeing the preprocessing
    privacy_message: str | None = None  # why the run stopped before the spec's rounds (the DP budget)
    imputed: dict[str, int] = {}


def parameter_digest(parameters: Sequence[np.ndarray]) -> str:
    """SHA-256 of the parameters' shapes, dtypes and bytes: equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for layer in parameters:
        digest.update(str((layer.shape, layer.dtype.str)).encode())
        digest.update(np.ascontiguousarray(layer).tobytes())
    return digest.hexdigest()


def pooled_round(results: Sequence[SiteResult], index: int) -> RoundMetrics:
    """The federation's metrics after round `index + 1`: every site's records together."""
    task = results[0].preprocessing.task
    spent = [r.federated[index].epsilon for r in results if r.federated[index].epsilon is not None]
    return RoundMetrics(
        epoch=results[0].federated[index].epoch,
        train=pool([r.federated[index].train for r in results], task),
        test=pool([r.federated[index].test for r in results], task),
        epsilon=max(spent) if spent else None,
    )


def final_test_metrics(metrics: RoundMetrics | SplitMetrics) -> dict[str, float | None]:
    """Every metric of a round on test records (or of a split measured on test records), as `<name>_test`."""
    split = metrics.test if isinstance(metrics, RoundMetrics) else metrics
    return {f"{name}_test": value for name, value in split.values.items()}
