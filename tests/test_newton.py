"""The federated Newton fit of the univariate logistic models (`fedgrove.newton`) stops as soon as the Newton
decrement says each log-likelihood is at its maximum, and its likelihood-ratio statistics still equal
statsmodels' on the same records. One site holding every record stands in for the federation: the pooled sums
are then its own."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from sklearn.datasets import load_breast_cancer

import fedgrove.newton as newton


class Columns:
    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    @property
    def count(self) -> int:
        return self.matrix.shape[1]

    def block(self, start: int, stop: int, *, dtype: type = np.float64) -> np.ndarray:
        return self.matrix[:, start:stop].astype(dtype)


def fitted(matrix: np.ndarray, y: np.ndarray) -> newton.NewtonFit:
    conversation = newton.newton_fit(Columns(matrix), y, records=len(y))
    sums = next(conversation)
    try:
        while True:
            sums = conversation.send(sums)
    except StopIteration as done:
        return done.value


@pytest.fixture(scope="module")
def standardised() -> tuple[np.ndarray, np.ndarray]:
    X, labels = load_breast_cancer(return_X_y=True)
    return (X - X.mean(axis=0)) / X.std(axis=0), (labels == 0).astype(float)


def test_the_lr_statistics_equal_statsmodels_to_1e_9(standardised: tuple[np.ndarray, np.ndarray]) -> None:
    matrix, y = standardised
    rate = y.mean()
    null_loglik = len(y) * (rate * np.log(rate) + (1.0 - rate) * np.log(1.0 - rate))  # closed form
    reference = []
    for column in matrix.T:
        fit = sm.Logit(y, sm.add_constant(column, has_constant="add")).fit(disp=0, method="newton", tol=1e-12,
                                                                            maxiter=100)
        reference.append(2.0 * (fit.llf - null_loglik))
    statistics = fitted(matrix, y).lrt_statistics()
    np.testing.assert_allclose(statistics, reference, rtol=1e-9)


def test_the_decrement_saves_the_exchange_that_would_only_confirm_the_last_step(
    standardised: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix, y = standardised
    with_decrement = fitted(matrix, y)
    monkeypatch.setattr(newton, "DECREMENT_TOLERANCE", 0.0)
    steps_only = fitted(matrix, y)
    assert with_decrement.iterations == steps_only.iterations - 1
    np.testing.assert_allclose(with_decrement.lrt_statistics(), steps_only.lrt_statistics(), rtol=1e-11)
