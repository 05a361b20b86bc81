"""The feature-selection task: standardise and pick the k most significant features (LRT p-values)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task

from fedgrove.data import read_partition
from fedgrove.features import FeatureSelection, select_features
from tasks.options import LOCAL


@task(name="select-features", **LOCAL)
def select_features_pooled(partition_paths: list[Path], *, k: int) -> FeatureSelection:
    """Pooled selection over the organisations' training partitions (the data never leaves this process)."""
    frame = pd.concat([read_partition(path) for path in partition_paths], ignore_index=True)
    return select_features(frame, k=k)
