"""Tasks that split the data set into organisations' private files and load one leaf's own slice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import task

from fedgrove.data import TARGET_COLUMN, load_dataset, read_partition, split_dataset, write_partitions
from fedgrove.features import FeatureSelection
from tasks.options import LOCAL


@dataclass(frozen=True)
class LeafData:
    """One organisation's standardised records and the shared held-out test set."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def records(self) -> int:
        return len(self.y)


@task(name="split-data", **LOCAL)
def prepare_partitions(
    directory: Path, *, organisations: int, split: str, alpha: float, seed: int, min_records: int = 1
) -> dict[str, Path]:
    """Write `test.csv` and one `<organisation>.csv` per organisation, each with at least `min_records`
    records; returns name -> path."""
    test, partitions = split_dataset(
        load_dataset(), organisations=organisations, split=split, alpha=alpha, seed=seed,  # type: ignore[arg-type]
        min_records=min_records,
    )
    return write_partitions(test, partitions, directory)


@task(name="load-leaf-data", **LOCAL)
def load_leaf_data(data_path: Path, test_path: Path, selection: FeatureSelection) -> LeafData:
    own, test = read_partition(data_path), read_partition(test_path)
    return LeafData(
        X=selection.transform(own),
        y=own[TARGET_COLUMN].to_numpy(np.float32),
        X_test=selection.transform(test),
        y_test=test[TARGET_COLUMN].to_numpy(np.float32),
    )
