"""The federated floor without server or Prefect, and the baselines it is judged against.

Why this module exists: it is the reference the real system must match. ``fedavg_in_memory`` runs the same
rounds as the flows (every leaf starts a round from the global parameters, trains ``local_epochs`` with
``train_local``, the aggregate is the sample-count-weighted mean accumulated in float64), with no I/O.
``train_alone`` is the "each organisation alone" and the "centralised" baseline, built from the same
functions, so the three curves differ only in who sees which data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from fedgrove.model import (
    TrainConfig,
    build_model,
    evaluate,
    get_parameters,
    set_parameters,
    to_tensor,
    train_local,
)
from fedgrove_common.fedavg import weighted_mean

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class EpochMetrics:
    """Metrics after one epoch (one round): on the organisation's own data and on the shared test set."""

    epoch: int
    accuracy: float
    loss: float
    accuracy_test: float
    loss_test: float


def leaf_seed(seed: int, organisation: str) -> int:
    """A leaf's shuffling seed: stable across processes and machines (unlike ``hash``), distinct per leaf."""
    digest = hashlib.sha256(f"{seed}:{organisation}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def weighted_average(results: Sequence[tuple[Sequence[np.ndarray], int]]) -> list[np.ndarray]:
    """FedAvg: per layer, the mean of the leaves' arrays weighted by sample count (float64 sums, float32 out),
    by `fedgrove_common.fedavg`, the server's arithmetic."""
    if not results:
        raise ValueError("expected at least one (parameters, sample count) pair, got none")
    counts = [count for _, count in results]
    if sum(counts) <= 0 or any(count < 0 for count in counts):
        raise ValueError(f"expected non-negative sample counts with a positive sum, got {counts}")
    if len({len(params) for params, _ in results}) != 1:
        raise ValueError(f"expected every leaf to send {len(results[0][0])} arrays, got "
                         f"{[len(params) for params, _ in results]}")
    as_float64 = [([np.asarray(p, dtype=np.float64) for p in params], count) for params, count in results]
    averaged = weighted_mean(as_float64)
    return [layer.astype(np.float32, copy=False) for layer in averaged]


Tensors = tuple[torch.Tensor, torch.Tensor]


def _metrics(epoch: int, model: torch.nn.Module, own: Tensors, test: Tensors) -> EpochMetrics:
    accuracy, loss = evaluate(model, *own)
    accuracy_test, loss_test = evaluate(model, *test)
    return EpochMetrics(epoch, accuracy, loss, accuracy_test, loss_test)


def train_alone(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int,
    config: TrainConfig,
    seed: int,
) -> list[EpochMetrics]:
    """Train one model on ``(X, y)`` only; one epoch = one ``train_local`` call, as one federated round."""
    model = build_model(X.shape[1], seed=seed)
    own, test = (to_tensor(X), to_tensor(y)), (to_tensor(X_test), to_tensor(y_test))
    history = []
    for epoch in range(1, epochs + 1):
        train_local(model, *own, config=config, seed=seed, epoch=epoch)
        history.append(_metrics(epoch, model, own, test))
    return history


def fedavg_in_memory(
    partitions: Mapping[str, Arrays],
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    rounds: int,
    config: TrainConfig,
    seed: int,
) -> dict[str, list[EpochMetrics]]:
    """FedAvg over ``partitions`` (organisation -> (X, y)); per organisation, metrics of each round's aggregate.

    All leaves start from ``build_model(k, seed=seed)``; leaf ``org`` shuffles with ``leaf_seed(seed, org)``.
    """
    if not partitions:
        raise ValueError("expected at least one organisation, got none")
    data = {org: (to_tensor(X), to_tensor(y)) for org, (X, y) in partitions.items()}
    test = (to_tensor(X_test), to_tensor(y_test))
    model = build_model(X_test.shape[1], seed=seed)
    global_params = get_parameters(model)
    history: dict[str, list[EpochMetrics]] = {org: [] for org in data}
    for epoch in range(1, rounds + 1):
        results = []
        for org, (X, y) in data.items():
            set_parameters(model, global_params)
            train_local(model, X, y, config=config, seed=leaf_seed(seed, org), epoch=epoch)
            results.append((get_parameters(model), len(y)))
        global_params = weighted_average(results)
        set_parameters(model, global_params)
        accuracy_test, loss_test = evaluate(model, *test)
        for org, own in data.items():
            accuracy, loss = evaluate(model, *own)
            history[org].append(EpochMetrics(epoch, accuracy, loss, accuracy_test, loss_test))
    return history


def metrics_frame(mode: str, history: Mapping[str, Sequence[EpochMetrics]]) -> pd.DataFrame:
    """Long frame (``mode``, ``organisation``, ``epoch``, metrics…) as ``plot_results`` expects."""
    rows = [{"mode": mode, "organisation": org, **asdict(m)} for org, ms in history.items() for m in ms]
    columns = ["mode", "organisation", *EpochMetrics.__dataclass_fields__]
    return pd.DataFrame(rows, columns=columns)
