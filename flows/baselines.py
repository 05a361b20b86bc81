"""`baselines`: the same model and epochs without federation, per organisation, and centralised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import flow

from fedgrove.features import FeatureSelection
from fedgrove.model import TrainConfig
from tasks.baselines import train_alone_task
from tasks.data import load_leaf_data


@flow(name="baselines")
def baselines(
    *,
    partition_paths: dict[str, Path],
    test_path: Path,
    selection: FeatureSelection,
    epochs: int,
    train: TrainConfig,
    seeds: dict[str, int],
    seed: int,
) -> tuple[dict[str, list[dict[str, float]]], list[dict[str, float]]]:
    """Returns (each organisation alone: org -> per-epoch metrics, centralised per-epoch metrics)."""
    data = {org: load_leaf_data(path, test_path, selection) for org, path in partition_paths.items()}
    local_only = {
        org: train_alone_task(d.X, d.y, d.X_test, d.y_test, epochs=epochs, config=train, seed=seeds[org])
        for org, d in data.items()
    }
    first = next(iter(data.values()))
    X = np.concatenate([d.X for d in data.values()])
    y = np.concatenate([d.y for d in data.values()])
    centralised = train_alone_task(X, y, first.X_test, first.y_test, epochs=epochs, config=train, seed=seed)
    return local_only, centralised
