"""Feature selection and standardisation, as one JSON-serialisable object handed to every leaf.

Why this module exists: each leaf must transform its records exactly like every other leaf (same columns,
same order, same means and standard deviations), so the selection is data, not code. Today it is computed
on the pooled training data (``method="pooled-lrt"``); because the object is passed to leaves as-is, a later
change can compute the same fields federatedly without touching the leaves.

Why likelihood-ratio tests: the full 30-feature logistic model is perfectly separable on this data, so its
p-values do not exist (Newton hits a singular matrix, BFGS gives no standard errors). Univariate *Wald*
p-values suffer from the Hauck–Donner effect and rank the strongly separating features lower (their 4 picks
give ~84% test accuracy). Univariate *likelihood-ratio* p-values rank the strong ones first (worst
perimeter, worst radius, worst area, worst concave points; ~94–95%). Those p-values underflow to 0.0 in
float64 for strong enough features, so ranking uses log p-values. ``scipy.stats.chi2.logsf`` itself returns
-inf once the statistic passes ~1480 (scipy 1.17), so for 1 dof the exact identity
``log sf(x) = log 2 + log_ndtr(-sqrt(x))`` is used: it stays finite for any finite statistic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator
from scipy.special import log_ndtr
from scipy.stats import chi2

from fedgrove.data import TARGET_COLUMN


class FeatureSelection(BaseModel):
    """Selected columns with the means and (population) standard deviations used to standardise them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: list[str]
    means: list[float]
    stds: list[float]
    p_values: list[float]
    method: str

    @model_validator(mode="after")
    def _check_lengths(self) -> FeatureSelection:
        lengths = {len(self.features), len(self.means), len(self.stds), len(self.p_values)}
        if len(lengths) != 1 or not self.features:
            raise ValueError(
                f"expected features, means, stds and p_values of one equal, non-zero length, got "
                f"{len(self.features)}, {len(self.means)}, {len(self.stds)}, {len(self.p_values)}"
            )
        if any(not np.isfinite(s) or s <= 0 for s in self.stds):
            raise ValueError(f"expected every std to be finite and > 0, got {self.stds}")
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised selected columns, in ``features`` order, as a float32 ``(n, k)`` array."""
        missing = [name for name in self.features if name not in frame.columns]
        if missing:
            raise ValueError(f"expected columns {missing} in the frame, they are missing (got "
                             f"{len(frame.columns)} columns; fix: pass records with every selected feature)")
        values = frame[self.features].to_numpy(dtype=np.float64)
        return ((values - np.asarray(self.means)) / np.asarray(self.stds)).astype(np.float32)


def lrt_statistics(X_standardised: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column: LR statistic ``2 * (llf - llnull)`` of the univariate logistic model with a constant."""
    import statsmodels.api as sm  # only the pooled selection needs it: ~31 MB and ~0.6 s of import
    X = np.asarray(X_standardised, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"expected X of shape (n, d) and y of shape (n,), got {X.shape} and {y.shape}")
    stats = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        result = sm.Logit(y, sm.add_constant(X[:, j], has_constant="add")).fit(disp=0)
        stats[j] = 2.0 * (result.llf - result.llnull)
    return stats


def lrt_p_values(X_standardised: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per column: likelihood-ratio-test p-value (chi2, 1 dof) of the univariate logistic model."""
    return chi2.sf(lrt_statistics(X_standardised, y), df=1)


def chi2_1dof_logsf(statistic: np.ndarray) -> np.ndarray:
    """``log chi2.sf(x, df=1)``, finite where ``chi2.logsf`` gives -inf: sf(x) = 2 * Phi(-sqrt(x)) for 1 dof."""
    return np.log(2.0) + log_ndtr(-np.sqrt(np.maximum(np.asarray(statistic, dtype=np.float64), 0.0)))


def lrt_log_p_values(X_standardised: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Natural-log LRT p-values: still finite (and so rankable) where ``lrt_p_values`` underflows to 0."""
    return chi2_1dof_logsf(lrt_statistics(X_standardised, y))


def select_features(frame: pd.DataFrame, *, k: int = 4) -> FeatureSelection:
    """Standardise every non-target column (mean, ddof=0 std) and keep the ``k`` with the smallest LRT p-value."""
    if TARGET_COLUMN not in frame.columns:
        raise ValueError(f"expected a {TARGET_COLUMN!r} column, it is missing (fix: pass training records)")
    candidates = [str(c) for c in frame.columns if c != TARGET_COLUMN]
    if not 1 <= k <= len(candidates):
        raise ValueError(f"expected 1 <= k <= {len(candidates)} (the number of feature columns), got {k}")
    values = frame[candidates].to_numpy(dtype=np.float64)
    means, stds = values.mean(axis=0), values.std(axis=0, ddof=0)
    constant = [name for name, s in zip(candidates, stds, strict=True) if s == 0]
    if constant:
        raise ValueError(f"expected non-constant feature columns, got constant {constant} "
                         "(fix: drop them before selecting)")
    stats = lrt_statistics((values - means) / stds, frame[TARGET_COLUMN].to_numpy())
    order = np.argsort(chi2_1dof_logsf(stats), kind="stable")[:k]
    return FeatureSelection(
        features=[candidates[j] for j in order],
        means=[float(means[j]) for j in order],
        stds=[float(stds[j]) for j in order],
        p_values=[float(p) for p in chi2.sf(stats[order], df=1)],
        method="pooled-lrt",
    )
