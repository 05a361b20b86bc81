"""Federated selection for a regression target: the univariate F-test of every encoded feature, from sums.

Why this module exists: for a numeric target the classic first look is the F-statistic of each feature's
simple linear regression (scikit-learn's `f_regression`). It needs only the pooled sums of x, y, x², y² and
xy per feature: r = cov(x, y) / (sd x sd y), F = r² (n - 2) / (1 - r²) with 1 and n - 2 degrees of freedom.
One exchange; every degree of freedom is the same for every feature, so ranking by F is ranking by p-value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import f as f_distribution

from fedgrove.newton import BLOCK_COLUMNS, ColumnBlocks

Fields = dict[str, np.ndarray]


def f_test_sums(X: ColumnBlocks, y: np.ndarray) -> Fields:
    """One site's sums: per feature Σx, Σx², Σxy; and n, Σy, Σy²."""
    x_sum, x_squares, xy = [], [], []
    for start in range(0, X.count, BLOCK_COLUMNS):
        block = X.block(start, min(start + BLOCK_COLUMNS, X.count), dtype=np.float64)
        x_sum.append(block.sum(axis=0))
        x_squares.append(np.square(block).sum(axis=0))
        xy.append((block * y[:, None]).sum(axis=0))
    return {
        "x_sum": np.concatenate(x_sum), "x_squares_sum": np.concatenate(x_squares), "xy_sum": np.concatenate(xy),
        "y_moments_sum": np.array([float(len(y)), float(y.sum()), float(np.square(y).sum())]),
    }


def f_statistics(pooled: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """Each feature's F-statistic and the records they cover."""
    n, y_sum, y_squares = (float(v) for v in pooled["y_moments_sum"])
    x_mean, y_mean = pooled["x_sum"] / n, y_sum / n
    covariance = pooled["xy_sum"] / n - x_mean * y_mean
    x_variance = pooled["x_squares_sum"] / n - x_mean**2
    y_variance = y_squares / n - y_mean**2
    r_squared = np.clip(covariance**2 / (x_variance * y_variance), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return r_squared / (1.0 - r_squared) * (n - 2), int(n)


def f_ranking(pooled: Mapping[str, np.ndarray], *, k: int) -> tuple[list[int], list[float]]:
    """The k features with the largest F (ties by position) and their p-values."""
    statistics, n = f_statistics(pooled)
    order = np.argsort(-statistics, kind="stable")[:k]
    return [int(j) for j in order], [float(p) for p in f_distribution.sf(statistics[order], 1, n - 2)]
