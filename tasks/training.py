"""Tasks that train on a leaf's own data and measure the model; pure apart from the metrics they record."""

from __future__ import annotations

import numpy as np
from prefect import task

from fedgrove.model import TrainConfig, build_model, evaluate, get_parameters, set_parameters, train_local
from fedgrove.simulation import EpochMetrics
from fedgrove.tracking import track_round
from tasks.data import LeafData
from tasks.options import LOCAL


@task(name="fit-local", **LOCAL)
def fit_local(
    parameters: list[np.ndarray], data: LeafData, *, config: TrainConfig, seed: int, round_number: int
) -> list[np.ndarray]:
    """Train from `parameters` for the configured local epochs; returns new parameters (inputs untouched,
    so a retry starts from the same place)."""
    model = build_model(data.X.shape[1], seed=0)
    set_parameters(model, parameters)
    train_local(model, data.X, data.y, config=config, seed=seed, epoch=round_number)
    return get_parameters(model)


@task(name="evaluate-and-track", **LOCAL)
def evaluate_and_track(
    parameters: list[np.ndarray], data: LeafData, *, round_number: int, leaf_name: str
) -> EpochMetrics:
    model = build_model(data.X.shape[1], seed=0)
    set_parameters(model, parameters)
    accuracy, loss = evaluate(model, data.X, data.y)
    accuracy_test, loss_test = evaluate(model, data.X_test, data.y_test)
    metrics = EpochMetrics(round_number, accuracy, loss, accuracy_test, loss_test)
    track_round(metrics, leaf_name=leaf_name)
    return metrics
