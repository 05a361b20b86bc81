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
from fedgrove.metrics import RoundMetrics, binary_metrics
from fedgrove.model import build_model, get_parameters, logits, set_parameters, train_local
from fedgrove.site_table import SiteTable
from fedgrove.spec import FederationSpec


@dataclass(frozen=True)
class SiteArrays:
    """A site's model inputs and label indices, for its training and test records."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    imputed: TransformReport

    @property
    def records(self) -> int:
        return len(self.y)


def site_arrays(table: SiteTable, preprocessing: Preprocessing) -> SiteArrays:
    X, report = preprocessing.transform(table.train)
    X_test, report_test = preprocessing.transform(table.test)
    for column, count in report_test.imputed.items():
        report.imputed[column] = report.imputed.get(column, 0) + count
    return SiteArrays(
        X=X,
        y=preprocessing.label_index(table.train[preprocessing.target]),
        X_test=X_test,
        y_test=preprocessing.label_index(table.test[preprocessing.target]),
        imputed=report,
    )


def initial_parameters(spec: FederationSpec, n_inputs: int) -> list[np.ndarray]:
    """The same starting model at every site: built from the spec's seed."""
    return get_parameters(build_model(n_inputs, seed=spec.train.seed, spec=spec.model))


def fit(
    parameters: list[np.ndarray], X: np.ndarray, y: np.ndarray, *, spec: FederationSpec, seed: int, epoch: int
) -> list[np.ndarray]:
    """Train from ``parameters`` for the spec's local epochs; returns new parameters (inputs untouched)."""
    model = build_model(X.shape[1], seed=0, spec=spec.model)
    set_parameters(model, parameters)
    train_local(model, X, y, train=spec.train, seed=seed, epoch=epoch)
    return get_parameters(model)


def measure(parameters: list[np.ndarray], arrays: SiteArrays, *, spec: FederationSpec, epoch: int) -> RoundMetrics:
    """The model's metrics on the site's training and test records."""
    model = build_model(arrays.X.shape[1], seed=0, spec=spec.model)
    set_parameters(model, parameters)
    return RoundMetrics(
        epoch=epoch,
        train=binary_metrics(arrays.y, logits(model, arrays.X)),
        test=binary_metrics(arrays.y_test, logits(model, arrays.X_test)),
    )


def train_alone(
    arrays: SiteArrays, *, spec: FederationSpec, seed: int, on_epoch: Callable[[RoundMetrics], None] | None = None
) -> list[RoundMetrics]:
    """The same model trained on these records only, for the same epochs as the federation has rounds."""
    parameters = initial_parameters(spec, arrays.X.shape[1])
    history = []
    for epoch in range(1, spec.train.rounds + 1):
        parameters = fit(parameters, arrays.X, arrays.y, spec=spec, seed=seed, epoch=epoch)
        metrics = measure(parameters, arrays, spec=spec, epoch=epoch)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    return history
