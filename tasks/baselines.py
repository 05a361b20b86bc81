"""Baseline tasks: each organisation alone, and the centralised model on all training data (upper bound)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from prefect import task

from fedgrove.model import TrainConfig
from fedgrove.simulation import train_alone
from tasks.options import LOCAL


@task(name="train-alone", **LOCAL)
def train_alone_task(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *, epochs: int, config: TrainConfig, seed: int
) -> list[dict[str, float]]:
    return [asdict(m) for m in train_alone(X, y, X_test, y_test, epochs=epochs, config=config, seed=seed)]
