"""Federated standardisation and LRT feature selection: what a leaf sums, and what every leaf derives from the sums.

Why this module exists: ``fedgrove.features.select_features`` standardises and ranks features on the pooled
training data, which organisations that cannot share records cannot compute. The same numbers follow from
sums that the aggregation server adds up field by field:

1. *Moments.* Each leaf sends, per feature, the record count and the sums of x and x² (the summable part of
   the ``save_analytics`` bundle: ``<f>_n, _nan, _sum, _sumsq``, which the server always sums). Every leaf
   derives the pooled mean and the population standard deviation (ddof=0) from the combined sums.
2. *Univariate logistic models.* For each feature j, the model ``logit p = a_j + b_j * z_j`` on the pooled
   standardised column ``z_j``, and the intercept-only (null) model, are fitted by Newton–Raphson. A leaf
   sends, per iteration and for all models at once, the sums of its score (gradient), information
   (negative Hessian) and log-likelihood at the current coefficients; the server sums them; every leaf
   applies the same Newton step to the same pooled coefficients, so all leaves stay bit-identical.
3. *Selection.* The LR statistic ``2 * (llf_j - llnull)`` and its chi2 (1 dof) log p-value rank the features
   exactly as ``select_features`` does.

Nothing sent is a per-record value: every field is a sum over the leaf's records, and a leaf with fewer than
``min_records`` records refuses to take part (a sum over two or three records says too much about them).
Deliberately, the moments are *not* the full ``save_analytics`` bundle: its ``_min`` / ``_max`` entries are
single records' values. ``pooled_moments`` reads a combined ``save_analytics`` bundle as well, because the
four summed entries carry the same names.

Field names are safe for ``save_fields`` and for the server's archive check (``[A-Za-z0-9_.-]``): feature j
is ``f00``, ``f01``, … in the order of the shared column list, never the data set's names (they contain
spaces). Pure functions over arrays; the I/O lives in ``tasks/preprocessing.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit
from scipy.stats import chi2

from fedgrove.data import TARGET_COLUMN
from fedgrove.features import FeatureSelection, chi2_1dof_logsf

DEFAULT_MIN_RECORDS = 10
DEFAULT_MAX_ITERATIONS = 25
DEFAULT_TOLERANCE = 1e-10
METHOD = "federated-lrt"

# The summable half of the save_analytics bundle; the server sums these suffixes whatever the branch config.
MOMENT_SUFFIXES = ("n", "nan", "sum", "sumsq")
# Newton sums: one value per univariate model (intercept a, slope b) ...
PER_FEATURE_FIELDS = ("score_intercept", "score_slope", "info_intercept", "info_cross", "info_slope", "loglik")
# ... and one value for the intercept-only model, plus the record count (summed by its `_n` suffix) ...
SCALAR_FIELDS = ("null_score", "null_info", "null_loglik", "records_n")
# ... and the exchange's tag: every leaf sends iteration t and 1, so the pooled sums satisfy iteration == t * leaves
# unless a late retry of an earlier iteration's upload landed in this aggregation (then every leaf stops).
TAG_FIELDS = ("iteration", "leaves")
# A variance this small next to the mean square cannot be told from rounding in sumsq/n - mean².
_RELATIVE_VARIANCE_FLOOR = 1e-12


class FederatedStatsError(ValueError):
    """Base of this module's errors: the leaf's records or the pooled sums cannot be used."""


class TooFewRecords(FederatedStatsError):
    """The leaf holds fewer records than the federation's minimum; it must not send sums over them."""


class PooledSumsMismatch(FederatedStatsError):
    """The combined archive lacks fields, has other shapes, or disagrees with what the leaves sent."""


class NewtonDidNotConverge(RuntimeError):
    """The federated Newton–Raphson fit did not settle; every leaf reaches this from the same pooled sums."""


def field_names(columns: Sequence[str]) -> list[str]:
    """Archive-safe names for ``columns``, by position: ``f00``, ``f01``, … (wider when there are > 100)."""
    width = max(2, len(str(len(columns) - 1)))
    return [f"f{j:0{width}d}" for j in range(len(columns))]


def leaf_records(
    frame: pd.DataFrame, columns: Sequence[str], *, min_records: int = DEFAULT_MIN_RECORDS
) -> tuple[np.ndarray, np.ndarray]:
    """The leaf's ``(values (n, d) float64, y (n,) float64)``, refusing too few, missing or non-finite records."""
    if min_records < 1:
        raise ValueError(f"expected min_records >= 1, got {min_records}")
    records = len(frame)
    if records < min_records:
        raise TooFewRecords(
            f"expected at least {min_records} training records to take part in federated preprocessing, got "
            f"{records}: sums over so few records say too much about each of them (fix: leave this "
            "organisation out of the federation, or lower min_records for every leaf if that is acceptable)"
        )
    missing = [name for name in [*columns, TARGET_COLUMN] if name not in frame.columns]
    if missing:
        raise ValueError(f"expected columns {missing} in the leaf's records, they are missing "
                         "(fix: read the partition with fedgrove.data.read_partition)")
    values = frame[list(columns)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = [name for name, ok in zip(columns, np.isfinite(values).all(axis=0), strict=True) if not ok]
        raise ValueError(f"expected finite feature values, got NaN or Inf in {bad} "
                         "(fix: impute or drop those records before preprocessing)")
    y = frame[TARGET_COLUMN].to_numpy(dtype=np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"expected a 0/1 {TARGET_COLUMN!r} column, got values {sorted(set(y.tolist()))[:5]}")
    return values, y


def moment_sums(values: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per column ``<name>_n, _nan, _sum, _sumsq`` (one-element arrays, dtypes as in ``save_analytics``)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f"expected values of shape (n, {len(names)}), got {values.shape}")
    sums, squares = values.sum(axis=0), np.square(values).sum(axis=0)
    entries: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        entries[f"{name}_n"] = np.array([len(values)], dtype=np.int64)
        entries[f"{name}_nan"] = np.array([0], dtype=np.int64)
        entries[f"{name}_sum"] = np.array([sums[j]], dtype=np.float64)
        entries[f"{name}_sumsq"] = np.array([squares[j]], dtype=np.float64)
    return entries


def pooled_moments(combined: Mapping[str, np.ndarray], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(means, population stds, n)`` from combined moment sums (or a combined ``save_analytics`` bundle)."""
    wanted = [f"{name}_{suffix}" for name in names for suffix in MOMENT_SUFFIXES]
    missing = [key for key in wanted if key not in combined]
    if missing:
        raise PooledSumsMismatch(f"expected the combined moments to hold {missing[:4]}…, they are missing "
                                 "(fix: every leaf must send the same columns in the same order)")
    counts = np.array([_scalar(combined, f"{name}_n") for name in names])
    dropped = np.array([_scalar(combined, f"{name}_nan") for name in names])
    if (dropped != 0).any() or len(set(counts.tolist())) != 1 or counts[0] < 1:
        raise PooledSumsMismatch(f"expected one record count for every column and no omitted values, got counts "
                                 f"{sorted(set(counts.tolist()))} and {int(dropped.sum())} omitted values")
    n = int(counts[0])
    sums = np.array([_scalar(combined, f"{name}_sum") for name in names])
    squares = np.array([_scalar(combined, f"{name}_sumsq") for name in names])
    means = sums / n
    mean_squares = squares / n
    variances = mean_squares - np.square(means)
    constant = [name for name, v, ms in zip(names, variances, mean_squares, strict=True)
                if not v > _RELATIVE_VARIANCE_FLOOR * ms]
    if constant:
        raise PooledSumsMismatch(f"expected non-constant columns, got (numerically) constant {constant} "
                                 "(fix: drop them from the shared column list)")
    return means, np.sqrt(variances), n


def standardise(values: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """``(values - means) / stds`` in float64, the column transform every leaf applies with the pooled moments."""
    return (np.asarray(values, dtype=np.float64) - means) / stds


@dataclass(frozen=True)
class Coefficients:
    """The current fit of every model: ``intercept[j] + slope[j] * z_j`` for each feature, and the null model."""

    intercept: np.ndarray
    slope: np.ndarray
    null_intercept: float

    @classmethod
    def zeros(cls, features: int) -> Coefficients:
        return cls(intercept=np.zeros(features), slope=np.zeros(features), null_intercept=0.0)

    @property
    def features(self) -> int:
        return len(self.slope)


def newton_sums(
    X_standardised: np.ndarray, y: np.ndarray, coefficients: Coefficients, *, iteration: int
) -> dict[str, np.ndarray]:
    """One leaf's sums at ``coefficients`` for all univariate models and the null model, tagged with ``iteration``.

    Score = gradient of the log-likelihood; information = minus its Hessian, ``sum w [1, z; z, z²]`` with
    ``w = p (1 - p)``. Every entry is a sum over the leaf's records: per-feature arrays have shape (d,), the
    null model's and the record count shape (1,); the tag (``iteration``, ``leaves`` = 1) is no record data.
    """
    X = np.asarray(X_standardised, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (len(X),) or X.shape[1] != coefficients.features:
        raise ValueError(f"expected X of shape (n, {coefficients.features}) and y of shape (n,), "
                         f"got {X.shape} and {y.shape}")
    eta = coefficients.intercept + X * coefficients.slope
    p = expit(eta)
    weight = p * (1.0 - p)
    residual = y[:, None] - p
    weighted_x = weight * X
    n, positives = len(y), float(y.sum())
    p0 = float(expit(coefficients.null_intercept))
    c = coefficients.null_intercept
    return {
        "score_intercept": residual.sum(axis=0),
        "score_slope": (residual * X).sum(axis=0),
        "info_intercept": weight.sum(axis=0),
        "info_cross": weighted_x.sum(axis=0),
        "info_slope": (weighted_x * X).sum(axis=0),
        "loglik": (y[:, None] * eta - np.logaddexp(0.0, eta)).sum(axis=0),
        "null_score": np.array([positives - n * p0]),
        "null_info": np.array([n * p0 * (1.0 - p0)]),
        "null_loglik": np.array([positives * c - n * np.logaddexp(0.0, c)]),
        "records_n": np.array([n], dtype=np.int64),
        "iteration": np.array([iteration], dtype=np.int64),
        "leaves": np.array([1], dtype=np.int64),
    }


def check_newton_sums(pooled: Mapping[str, np.ndarray], features: int) -> None:
    """Raise ``PooledSumsMismatch`` unless ``pooled`` holds every Newton field, finite, in the expected shape."""
    for name in PER_FEATURE_FIELDS + SCALAR_FIELDS + TAG_FIELDS:
        expected = (features,) if name in PER_FEATURE_FIELDS else (1,)
        if name not in pooled:
            raise PooledSumsMismatch(f"expected field {name!r} in the combined Newton sums, it is missing "
                                     "(fix: create the branch with analytics_default_op='sum')")
        array = np.asarray(pooled[name])
        if array.shape != expected or not np.isfinite(array).all():
            raise PooledSumsMismatch(f"expected field {name!r} finite with shape {expected}, got shape "
                                     f"{array.shape}{'' if np.isfinite(array).all() else ' with NaN or Inf'}")


def newton_update(coefficients: Coefficients, pooled: Mapping[str, np.ndarray]) -> tuple[Coefficients, float]:
    """One Newton–Raphson step from the pooled sums: ``(new coefficients, largest absolute step)``.

    The 2×2 systems are solved in closed form, element by element: no LAPACK call whose rounding could
    differ between machines, so every leaf computes the same bits from the same pooled sums.
    """
    check_newton_sums(pooled, coefficients.features)
    s_a, s_b = pooled["score_intercept"], pooled["score_slope"]
    i_aa, i_ab, i_bb = pooled["info_intercept"], pooled["info_cross"], pooled["info_slope"]
    determinant = i_aa * i_bb - i_ab * i_ab
    singular = np.flatnonzero(~(determinant > 0))
    null_info = float(pooled["null_info"][0])
    if singular.size or not null_info > 0:
        raise NewtonDidNotConverge(
            f"expected positive-definite information matrices, got singular ones for the models of features "
            f"{singular.tolist()}{' and the null model' if not null_info > 0 else ''} (a feature that is constant "
            "or separates the classes perfectly; fix: drop it from the shared column list)"
        )
    step_a = (i_bb * s_a - i_ab * s_b) / determinant
    step_b = (i_aa * s_b - i_ab * s_a) / determinant
    step_null = float(pooled["null_score"][0]) / null_info
    updated = Coefficients(
        intercept=coefficients.intercept + step_a,
        slope=coefficients.slope + step_b,
        null_intercept=coefficients.null_intercept + step_null,
    )
    largest = max(float(np.abs(step_a).max(initial=0.0)), float(np.abs(step_b).max(initial=0.0)), abs(step_null))
    return updated, largest


@dataclass(frozen=True)
class NewtonFit:
    """The converged fit: coefficients, the pooled log-likelihoods, and how it got there."""

    coefficients: Coefficients
    loglik: np.ndarray
    null_loglik: float
    iterations: int
    max_steps: list[float] = field(default_factory=list)

    def lrt_statistics(self) -> np.ndarray:
        """``2 * (llf_j - llnull)`` per feature (as ``fedgrove.features.lrt_statistics``)."""
        return 2.0 * (self.loglik - self.null_loglik)


def fit_newton(
    pooled_sums_at: Callable[[int, Coefficients], Mapping[str, np.ndarray]],
    *,
    features: int,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
    records: int | None = None,
) -> NewtonFit:
    """Federated Newton–Raphson from zero coefficients; ``pooled_sums_at(iteration, coefficients)`` does the I/O.

    It must return the *combined* ``newton_sums(..., iteration=iteration)`` of every leaf at ``coefficients``
    (iterations count from 1). Stops once the largest absolute step is below ``tolerance``; the log-likelihoods are those of the last
    exchange (at most ``tolerance`` away from the optimum, where the log-likelihood is flat to second order).
    ``records``, if given, must equal the pooled record count (a leaf that changed its data is caught).
    """
    if max_iterations < 1 or not tolerance > 0:
        raise ValueError(f"expected max_iterations >= 1 and tolerance > 0, got {max_iterations} and {tolerance}")
    coefficients = Coefficients.zeros(features)
    steps: list[float] = []
    for iteration in range(1, max_iterations + 1):
        pooled = pooled_sums_at(iteration, coefficients)
        check_newton_sums(pooled, features)
        leaves, tags = int(pooled["leaves"][0]), int(pooled["iteration"][0])
        if tags != iteration * leaves:
            raise PooledSumsMismatch(
                f"expected the {leaves} contributions of Newton iteration {iteration} to sum their iteration tags "
                f"to {iteration * leaves}, got {tags}: a late retry of an earlier upload was aggregated with them "
                "(fix: rerun the preprocessing on a fresh branch)"
            )
        pooled_records = int(pooled["records_n"][0])
        if records is not None and pooled_records != records:
            raise PooledSumsMismatch(f"expected the Newton sums to cover the {records} records of the pooled "
                                     f"moments, got {pooled_records} (fix: no leaf may change its data mid-run)")
        coefficients, step = newton_update(coefficients, pooled)
        steps.append(step)
        if step < tolerance:
            return NewtonFit(
                coefficients=coefficients,
                loglik=np.asarray(pooled["loglik"], dtype=np.float64).copy(),
                null_loglik=float(pooled["null_loglik"][0]),
                iterations=iteration,
                max_steps=steps,
            )
    raise NewtonDidNotConverge(
        f"expected the federated Newton fit to converge within {max_iterations} iterations (largest step < "
        f"{tolerance:g}), the last step was {steps[-1]:.3g} (fix: raise max_iterations, or drop features that "
        "separate the classes perfectly)"
    )


def lrt_selection(
    columns: Sequence[str], *, fit: NewtonFit, means: np.ndarray, stds: np.ndarray, k: int
) -> FeatureSelection:
    """The ``k`` features with the smallest LRT p-value (ranked by log p-value, ties by column order)."""
    if not 1 <= k <= len(columns):
        raise ValueError(f"expected 1 <= k <= {len(columns)} (the number of feature columns), got {k}")
    if not len(columns) == len(fit.loglik) == len(means) == len(stds):
        raise ValueError(f"expected one log-likelihood, mean and std per column ({len(columns)}), got "
                         f"{len(fit.loglik)}, {len(means)}, {len(stds)}")
    statistics = fit.lrt_statistics()
    order = np.argsort(chi2_1dof_logsf(statistics), kind="stable")[:k]
    return FeatureSelection(
        features=[str(columns[j]) for j in order],
        means=[float(means[j]) for j in order],
        stds=[float(stds[j]) for j in order],
        p_values=[float(p) for p in chi2.sf(np.maximum(statistics[order], 0.0), df=1)],
        method=METHOD,
    )


def _scalar(combined: Mapping[str, np.ndarray], key: str) -> float:
    array = np.asarray(combined[key])
    if array.size != 1 or not np.isfinite(array).all():
        raise PooledSumsMismatch(f"expected {key!r} to be one finite number, got shape {array.shape}")
    return float(array.reshape(-1)[0])
