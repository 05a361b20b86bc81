"""The oracle for federated preprocessing: the same statistics computed on the pooled training records with
pandas and statsmodels, written here independently of fedgrove's code.

Given the columns and their kinds, it imputes numeric columns with the pooled mean, one-hot encodes
categorical columns (categories as text, integer-valued numbers without ".0"; a category rarer than the
threshold becomes "<other>", an empty cell "<missing>"), drops constant encoded columns, standardises every
encoded column with its pooled mean and population standard deviation, and ranks the encoded columns by
the likelihood-ratio statistic of statsmodels' univariate `Logit`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy.stats import chi2
from statsmodels.tools.sm_exceptions import ConvergenceWarning


@dataclass(frozen=True)
class PooledPreprocessing:
    encoded: pd.DataFrame  # encoded columns before standardisation, named "column" or "column=level"
    means: pd.Series
    stds: pd.Series


def _category_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def pooled_preprocessing(
    train: pd.DataFrame, *, numeric: list[str], categorical: list[str], min_category_count: int
) -> PooledPreprocessing:
    parts = {}
    for column in numeric:
        values = pd.to_numeric(train[column])
        parts[column] = values.fillna(values.mean())
    for column in categorical:
        text = train[column].map(lambda v: None if pd.isna(v) else _category_text(v))
        counts = text.value_counts()
        kept = set(counts[counts >= min_category_count].index)
        levels = text.map(lambda v: "<missing>" if pd.isna(v) else (v if v in kept else "<other>"))
        for level in sorted(kept) + ["<other>", "<missing>"]:
            parts[f"{column}={level}"] = (levels == level).astype(float)
    encoded = pd.DataFrame(parts)
    stds = encoded.std(ddof=0)
    encoded = encoded.loc[:, stds > 1e-12 * encoded.mean().abs().clip(lower=1e-150)]
    return PooledPreprocessing(encoded=encoded, means=encoded.mean(), stds=encoded.std(ddof=0))


def lrt_statistics(pooled: PooledPreprocessing, y: np.ndarray) -> pd.Series:
    """Per encoded column: 2 (llf - llnull) of statsmodels' univariate Logit on the standardised column."""
    standardised = (pooled.encoded - pooled.means) / pooled.stds
    stats = {}
    for column in standardised.columns:
        with warnings.catch_warnings():
            # A level whose few records are all of one label has no finite slope: statsmodels stops after its
            # 35 iterations and warns, with the log-likelihood settled to its limit.
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = sm.Logit(y, sm.add_constant(standardised[column].to_numpy(), has_constant="add")).fit(disp=0)
        stats[column] = 2.0 * (fit.llf - fit.llnull)
    return pd.Series(stats)


def top_k(statistics: pd.Series, k: int) -> tuple[list[str], list[float]]:
    order = statistics.sort_values(ascending=False, kind="stable").index[:k]
    return list(order), [float(chi2.sf(statistics[c], df=1)) for c in order]


def multinomial_lrt_statistics(pooled: PooledPreprocessing, classes: np.ndarray) -> pd.Series:
    """Per encoded column: 2 (llf - llnull) of statsmodels' univariate `MNLogit` on the standardised column."""
    standardised = (pooled.encoded - pooled.means) / pooled.stds
    stats = {}
    for column in standardised.columns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = sm.MNLogit(classes, sm.add_constant(standardised[column].to_numpy(), has_constant="add")).fit(
                disp=0, method="newton", maxiter=100)
        stats[column] = 2.0 * (fit.llf - fit.llnull)
    return pd.Series(stats)


def f_test_statistics(pooled: PooledPreprocessing, y: np.ndarray) -> pd.Series:
    """Per encoded column: scikit-learn's univariate F-statistic against the target."""
    from sklearn.feature_selection import f_regression

    statistics, _ = f_regression(pooled.encoded.to_numpy(), y)
    return pd.Series(statistics, index=pooled.encoded.columns)


def top_k_with_dof(statistics: pd.Series, k: int, *, dof: int | tuple[int, int]) -> tuple[list[str], list[float]]:
    """The k largest statistics and their p-values: chi2 with `dof`, or F with (1, n - 2) given as a tuple."""
    from scipy.stats import f as f_distribution

    order = statistics.sort_values(ascending=False, kind="stable").index[:k]
    if isinstance(dof, tuple):
        return list(order), [float(f_distribution.sf(statistics[c], *dof)) for c in order]
    return list(order), [float(chi2.sf(statistics[c], df=dof)) for c in order]
