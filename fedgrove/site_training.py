"""What a site does with its records once preprocessing is agreed: model inputs, one local fit, one evaluation.

Why this module exists: the leaf flow's tasks, the site's "alone" baseline, the centralised baseline and the
in-memory simulation must train and measure in exactly the same way; these are those steps, as pure
functions over arrays (the Prefect tasks in `tasks/training.py` only wrap them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedgrove.encoding import Preprocessing, TransformReport
from fedgrove.metrics import RoundMetrics, SplitMetrics, binary_metrics, multiclass_metrics, regression_metrics
from fedgrove.model import (
    OptimizerState,
    build_model,
    get_parameters,
    outputs,
    outputs_for,
    set_parameters,
    task_loss,
    train_local,
    trainable,
)
from fedgrove.site_table import SiteTable
from fedgrove.spec import FederationSpec


@dataclass(frozen=True)
class SiteArrays:
    """A site's model inputs and targets, for its training and test records, and how they were made."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    preprocessing: Preprocessing
    imputed: TransformReport

    @property
    def records(self) -> int:
        return len(self.y)

    @property
    def n_outputs(self) -> int:
        return outputs_for(self.preprocessing.task, len(self.preprocessing.labels))


def site_arrays(table: SiteTable, preprocessing: Preprocessing) -> SiteArrays:
    X, report = preprocessing.transform(table.train)
    X_test, report_test = preprocessing.transform(table.test)
    for column, count in report_test.imputed.items():
        report.imputed[column] = report.imputed.get(column, 0) + count
    return SiteArrays(
        X=X,
        y=preprocessing.targets(table.train[preprocessing.target]),
        X_test=X_test,
        y_test=preprocessing.targets(table.test[preprocessing.target]),
        preprocessing=preprocessing,
        imputed=report,
    )


def initial_parameters(spec: FederationSpec, n_inputs: int, n_outputs: int) -> list[np.ndarray]:
    """The same starting model at every site: built from the spec's seed."""
    return get_parameters(build_model(n_inputs, n_outputs, seed=spec.train.seed, spec=spec.model))


def fit(
    parameters: list[np.ndarray], arrays: SiteArrays, *, spec: FederationSpec, seed: int, epoch: int,
    state: OptimizerState | None = None,
) -> tuple[list[np.ndarray], OptimizerState | None]:
    """Train from `parameters` for the spec's local epochs on the site's training records; returns new
    parameters and the optimizer's state (inputs untouched)."""
    model = build_model(arrays.X.shape[1], arrays.n_outputs, seed=spec.train.seed, spec=spec.model)
    set_parameters(model, parameters)
    dp = spec.privacy.dp
    if dp is not None and dp.level == "record":
        from fedgrove.dp_training import train_local_dp  # Opacus: only for record-level DP

        train_local_dp(model, arrays.X, arrays.y, task=spec.task, train=spec.train, dp=dp, loss=task_loss)
        return get_parameters(model), None
    anchor = trainable(model) if spec.train.proximal_mu else None
    state = train_local(model, arrays.X, arrays.y, task=spec.task, train=spec.train, seed=seed, epoch=epoch,
                        state=state, anchor=anchor)
    return get_parameters(model), state


def measure_split(model_outputs: np.ndarray, y: np.ndarray, preprocessing: Preprocessing) -> SplitMetrics:
    """The task's metrics of the model's outputs against the targets."""
    if preprocessing.task == "multiclass":
        return multiclass_metrics(y, model_outputs, len(preprocessing.labels))
    if preprocessing.task == "regression":
        assert preprocessing.target_mean is not None and preprocessing.target_std is not None
        return regression_metrics(y, model_outputs, mean=preprocessing.target_mean, std=preprocessing.target_std)
    return binary_metrics(y, model_outputs)


def measure(parameters: list[np.ndarray], arrays: SiteArrays, *, spec: FederationSpec, epoch: int) -> RoundMetrics:
    """The model's metrics on the site's training and test records."""
    model = build_model(arrays.X.shape[1], arrays.n_outputs, seed=spec.train.seed, spec=spec.model)
    set_parameters(model, parameters)
    return RoundMetrics(
        epoch=epoch,
        train=measure_split(outputs(model, arrays.X), arrays.y, arrays.preprocessing),
        test=measure_split(outputs(model, arrays.X_test), arrays.y_test, arrays.preprocessing),
    )


def train_alone(
    arrays: SiteArrays, *, spec: FederationSpec, seed: int, on_epoch: Callable[[RoundMetrics], None] | None = None
) -> list[RoundMetrics]:
    """The same model trained on these records only, for the same epochs as the federation has rounds."""
    parameters = initial_parameters(spec, arrays.X.shape[1], arrays.n_outputs)
    state: OptimizerState | None = None
    history = []
    for epoch in range(1, spec.train.rounds + 1):
        parameters, state = fit(parameters, arrays, spec=spec, seed=seed, epoch=epoch, state=state)
        metrics = measure(parameters, arrays, spec=spec, epoch=epoch)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history
