"""Federated likelihood-ratio feature selection: every univariate logistic model fitted by Newton from sums.

Why this module exists: ranking features by significance on the pooled data is what a statistician does
first, and organisations that cannot pool records can still do it exactly. For each encoded feature j the
model ``logit p = a_j + b_j * z_j`` and the intercept-only model are fitted by Newton–Raphson. Per
iteration a site sends, for all models at once, the sums of its scores (gradient), information (minus the
Hessian) and log-likelihoods at the current coefficients; the server adds them; every site applies the
same update, solved in closed form (no LAPACK whose rounding could differ between machines), so all sites
hold bit-identical coefficients. The LR statistic ``2 (llf_j - llnull)`` ranks the features.

Why likelihood-ratio tests: strongly separating features make Wald p-values rank them *lower*
(Hauck–Donner); their LRT p-values rank them first. For a feature that separates the labels (a rare
category all of one label), the slope has no finite maximum but the log-likelihood converges: a model
counts as settled once its step or its log-likelihood's change is negligible, or once the Newton decrement
says its log-likelihood is within a negligible gap of the maximum (which saves the last exchange, whose only
news would be that the step before it was already enough). P-values underflow to 0
for strong features, so ranking uses log p-values: for 1 dof, ``log sf(x) = log 2 + log_ndtr(-sqrt(x))``,
finite where ``scipy.stats.chi2.logsf`` gives -inf (past x ~ 1480).

Field names end in ``_sum``, which every BranchKey server sums whatever the branch's configuration.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.special import expit, log_ndtr
from scipy.stats import chi2

MAX_ITERATIONS = 50
STEP_TOLERANCE = 1e-10
LOGLIK_TOLERANCE = 1e-13  # relative change of a model's log-likelihood between iterations
# Half the Newton decrement (g' I^-1 g / 2): how far, to second order, the log-likelihood at the current
# coefficients is below its maximum. A model whose gap is this small (relative) needs no further exchange.
DECREMENT_TOLERANCE = 1e-10

PER_FEATURE_FIELDS = ("score_intercept_sum", "score_slope_sum", "info_intercept_sum", "info_cross_sum",
                      "info_slope_sum", "loglik_sum")
NULL_FIELDS = ("null_score_sum", "null_info_sum", "null_loglik_sum")
RECORDS_FIELD = "newton_records_sum"

Fields = dict[str, np.ndarray]
BLOCK_COLUMNS = 32  # columns whose records are in memory at once: bounds the fit's memory on wide tables


class ColumnBlocks(Protocol):
    """Standardised feature columns, handed out a block at a time (`fedgrove.encoding.PreparedColumns`)."""

    @property
    def count(self) -> int: ...

    def block(self, start: int, stop: int, *, dtype: type = ...) -> np.ndarray: ...


class NewtonError(ValueError):
    """The federated fit cannot go on: the same message at every site, from the same pooled sums."""


def chi2_1dof_logsf(statistic: np.ndarray) -> np.ndarray:
    """``log chi2.sf(x, df=1)``, finite where ``chi2.logsf`` gives -inf: sf(x) = 2 * Phi(-sqrt(x)) for 1 dof."""
    return np.log(2.0) + log_ndtr(-np.sqrt(np.maximum(np.asarray(statistic, dtype=np.float64), 0.0)))


@dataclass(frozen=True)
class Coefficients:
    """The current fit of every model: ``intercept[j] + slope[j] * z_j`` for each feature, and the null model."""

    intercept: np.ndarray
    slope: np.ndarray
    null_intercept: float

    @classmethod
    def zeros(cls, features: int) -> Coefficients:
        return cls(intercept=np.zeros(features), slope=np.zeros(features), null_intercept=0.0)


def newton_sums(X: ColumnBlocks, y: np.ndarray, coefficients: Coefficients) -> Fields:
    """One site's sums at ``coefficients``: per feature arrays of shape (d,), the null model's of shape (1,)."""
    per_feature: dict[str, list[np.ndarray]] = {name: [] for name in PER_FEATURE_FIELDS}
    for start in range(0, X.count, BLOCK_COLUMNS):
        stop = min(start + BLOCK_COLUMNS, X.count)
        block = X.block(start, stop, dtype=np.float64)
        eta = coefficients.intercept[start:stop] + block * coefficients.slope[start:stop]
        p = expit(eta)
        weight = p * (1.0 - p)
        residual = y[:, None] - p
        weighted_x = weight * block
        per_feature["score_intercept_sum"].append(residual.sum(axis=0))
        per_feature["score_slope_sum"].append((residual * block).sum(axis=0))
        per_feature["info_intercept_sum"].append(weight.sum(axis=0))
        per_feature["info_cross_sum"].append(weighted_x.sum(axis=0))
        per_feature["info_slope_sum"].append((weighted_x * block).sum(axis=0))
        per_feature["loglik_sum"].append((y[:, None] * eta - np.logaddexp(0.0, eta)).sum(axis=0))
    n, positives = len(y), float(y.sum())
    c = coefficients.null_intercept
    p0 = float(expit(c))
    return {
        **{name: np.concatenate(parts) for name, parts in per_feature.items()},
        "null_score_sum": np.array([positives - n * p0]),
        "null_info_sum": np.array([n * p0 * (1.0 - p0)]),
        "null_loglik_sum": np.array([positives * c - n * np.logaddexp(0.0, c)]),
        RECORDS_FIELD: np.array([n], dtype=np.int64),
    }


def _checked(pooled: Mapping[str, np.ndarray], features: int) -> None:
    for name in PER_FEATURE_FIELDS + NULL_FIELDS:
        expected = (features,) if name in PER_FEATURE_FIELDS else (1,)
        array = pooled.get(name)
        if array is None or array.shape != expected or not np.isfinite(array).all():
            raise NewtonError(f"expected pooled Newton field {name!r} finite with shape {expected}, got "
                              f"{'nothing' if array is None else array.shape} (fix: every site must run the same "
                              "fedgrove version)")


def newton_step(
    coefficients: Coefficients, pooled: Mapping[str, np.ndarray]
) -> tuple[Coefficients, np.ndarray, np.ndarray]:
    """One Newton–Raphson step from the pooled sums: new coefficients, each model's largest step and each
    model's half Newton decrement at the current coefficients (per feature; the null model's is last)."""
    s_a, s_b = pooled["score_intercept_sum"], pooled["score_slope_sum"]
    i_aa, i_ab, i_bb = pooled["info_intercept_sum"], pooled["info_cross_sum"], pooled["info_slope_sum"]
    determinant = i_aa * i_bb - i_ab * i_ab
    null_info = float(pooled["null_info_sum"][0])
    singular = np.flatnonzero(~(determinant > 0))
    if singular.size or not null_info > 0:
        raise NewtonError(f"expected positive-definite information matrices, got singular ones for the models of "
                          f"encoded features {singular.tolist()}{' and the null model' if not null_info > 0 else ''}")
    step_a = (i_bb * s_a - i_ab * s_b) / determinant
    step_b = (i_aa * s_b - i_ab * s_a) / determinant
    step_null = float(pooled["null_score_sum"][0]) / null_info
    updated = Coefficients(
        intercept=coefficients.intercept + step_a,
        slope=coefficients.slope + step_b,
        null_intercept=coefficients.null_intercept + step_null,
    )
    gap = 0.5 * np.append(s_a * step_a + s_b * step_b, float(pooled["null_score_sum"][0]) * step_null)
    return updated, np.append(np.maximum(np.abs(step_a), np.abs(step_b)), abs(step_null)), gap


@dataclass(frozen=True)
class NewtonFit:
    loglik: np.ndarray
    null_loglik: float
    iterations: int

    def lrt_statistics(self) -> np.ndarray:
        return 2.0 * (self.loglik - self.null_loglik)


def newton_fit(
    X: ColumnBlocks, y: np.ndarray, *, records: int, max_iterations: int = MAX_ITERATIONS
) -> Generator[Fields, Mapping[str, np.ndarray], NewtonFit]:
    """The fit as a conversation: yields this site's sums, receives the pooled sums, returns the fit.

    ``records`` is the pooled training record count; sums over another count mean a site changed its data."""
    features = X.count
    coefficients = Coefficients.zeros(features)
    previous: np.ndarray | None = None
    for iteration in range(1, max_iterations + 1):
        pooled = yield newton_sums(X, y, coefficients)
        _checked(pooled, features)
        pooled_records = int(pooled[RECORDS_FIELD][0])
        if pooled_records != records:
            raise NewtonError(f"expected the Newton sums to cover the {records} pooled training records, got "
                              f"{pooled_records} (fix: no site may change its data during a run)")
        loglik = np.append(pooled["loglik_sum"], pooled["null_loglik_sum"])
        coefficients, steps, gap = newton_step(coefficients, pooled)
        settled = (steps < STEP_TOLERANCE) | (gap <= DECREMENT_TOLERANCE * (1.0 + np.abs(loglik)))
        if previous is not None:
            settled |= np.abs(loglik - previous) <= LOGLIK_TOLERANCE * (1.0 + np.abs(loglik))
        if settled.all():
            return NewtonFit(loglik=loglik[:-1].copy(), null_loglik=float(loglik[-1]), iterations=iteration)
        previous = loglik
    raise NewtonError(f"expected the federated Newton fit to settle within {max_iterations} iterations, "
                      f"{int((~settled).sum())} models did not (fix: list the features that separate the labels "
                      "under exclude)")


def lrt_ranking(fit: NewtonFit, *, k: int) -> tuple[list[int], list[float]]:
    """The k features with the smallest LRT p-value (by log p-value, ties by position) and their p-values."""
    statistics = np.maximum(fit.lrt_statistics(), 0.0)
    order = np.argsort(chi2_1dof_logsf(statistics), kind="stable")[:k]
    return [int(j) for j in order], [float(p) for p in chi2.sf(statistics[order], df=1)]
