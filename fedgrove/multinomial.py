"""Federated likelihood-ratio selection for a multiclass target: every univariate multinomial logit fitted
by Newton from sums.

Why this module exists: the binary selection (`fedgrove.newton`) extends to K classes. For each encoded feature
j the model `log p_k / p_0 = a_k + b_k z_j` (k = 1 … K-1, the first label the baseline) and the intercept-only
model are fitted by Newton–Raphson. Per iteration a site sends, for all models at once, the sums of its
scores and of the blocks of the information matrix (`sum p_k (d_kl - p_l) [1, z, z²]`) and its
log-likelihoods; every site solves the same K-1 or 2(K-1) systems by a Cholesky factorisation written out
element by element (no LAPACK call whose rounding could differ between machines), so all sites hold the same
coefficients. The LR statistic `2 (llf_j - llnull)` has K-1 degrees of freedom for every feature, so
ranking by it is ranking by p-value. A model counts as settled as in `fedgrove.newton`.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, softmax
from scipy.stats import chi2

from fedgrove.newton import (
    BLOCK_COLUMNS,
    LOGLIK_TOLERANCE,
    MAX_ITERATIONS,
    RECORDS_FIELD,
    STEP_TOLERANCE,
    ColumnBlocks,
    NewtonError,
)

Fields = dict[str, np.ndarray]


@dataclass(frozen=True)
class MultinomialFit:
    loglik: np.ndarray
    null_loglik: float
    classes: int
    iterations: int

    def lrt_statistics(self) -> np.ndarray:
        return 2.0 * (self.loglik - self.null_loglik)


def _eta(intercepts: np.ndarray, slopes: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(n, d, K) linear predictors with the baseline class's fixed at 0."""
    n, d = z.shape
    eta = np.zeros((n, d, intercepts.shape[1] + 1))
    eta[:, :, 1:] = intercepts[None, :, :] + slopes[None, :, :] * z[:, :, None]
    return eta


def multinomial_sums(X: ColumnBlocks, y: np.ndarray, *, intercepts: np.ndarray, slopes: np.ndarray,
                     null: np.ndarray) -> Fields:
    """One site's sums at the current coefficients (`intercepts`, `slopes`: (d, K-1); `null`: (K-1,))."""
    classes = intercepts.shape[1] + 1
    onehot = np.eye(classes)[y.astype(np.int64)][:, 1:]  # (n, K-1)
    blocks: dict[str, list[np.ndarray]] = {k: [] for k in ("score_a_sum", "score_b_sum", "info_aa_sum",
                                                          "info_ab_sum", "info_bb_sum", "loglik_sum")}
    for start in range(0, X.count, BLOCK_COLUMNS):
        stop = min(start + BLOCK_COLUMNS, X.count)
        z = X.block(start, stop, dtype=np.float64)
        eta = _eta(intercepts[start:stop], slopes[start:stop], z)
        p = softmax(eta, axis=2)[:, :, 1:]  # (n, d, K-1)
        residual = onehot[:, None, :] - p
        weight = -p[:, :, :, None] * p[:, :, None, :]  # (n, d, K-1, K-1): p_k (d_kl - p_l)
        diagonal = np.arange(classes - 1)
        weight[:, :, diagonal, diagonal] += p
        zz = z[:, :, None, None]
        blocks["score_a_sum"].append(residual.sum(axis=0))
        blocks["score_b_sum"].append((residual * z[:, :, None]).sum(axis=0))
        blocks["info_aa_sum"].append(weight.sum(axis=0))
        blocks["info_ab_sum"].append((weight * zz).sum(axis=0))
        blocks["info_bb_sum"].append((weight * zz * zz).sum(axis=0))
        chosen = np.take_along_axis(log_softmax(eta, axis=2), y.astype(np.int64)[:, None, None], axis=2)[:, :, 0]
        blocks["loglik_sum"].append(chosen.sum(axis=0))
    eta0 = np.concatenate([[0.0], null])
    p0 = softmax(eta0)[1:]
    counts = onehot.sum(axis=0)
    n = len(y)
    return {
        **{name: np.concatenate(parts) for name, parts in blocks.items()},
        "null_score_sum": counts - n * p0,
        "null_info_sum": n * (np.diag(p0) - np.outer(p0, p0)),
        "null_loglik_sum": np.array([float(np.concatenate([[n - counts.sum()], counts]) @ log_softmax(eta0))]),
        RECORDS_FIELD: np.array([n], dtype=np.int64),
    }


def cholesky_solve(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Solve `matrix @ x = vector` for a batch of symmetric positive-definite systems ((b, m, m), (b, m)), written
    out element by element; NaN where a system is not positive definite."""
    batch, m, _ = matrix.shape
    lower = np.zeros_like(matrix)
    for j in range(m):
        diagonal = matrix[:, j, j].copy()
        for k in range(j):
            diagonal -= lower[:, j, k] * lower[:, j, k]
        lower[:, j, j] = np.sqrt(np.where(diagonal > 0, diagonal, np.nan))
        for i in range(j + 1, m):
            value = matrix[:, i, j].copy()
            for k in range(j):
                value -= lower[:, i, k] * lower[:, j, k]
            lower[:, i, j] = value / lower[:, j, j]
    forward = np.zeros((batch, m))
    for i in range(m):
        value = vector[:, i].copy()
        for k in range(i):
            value -= lower[:, i, k] * forward[:, k]
        forward[:, i] = value / lower[:, i, i]
    solution = np.zeros((batch, m))
    for i in reversed(range(m)):
        value = forward[:, i].copy()
        for k in range(i + 1, m):
            value -= lower[:, k, i] * solution[:, k]
        solution[:, i] = value / lower[:, i, i]
    return solution


def multinomial_fit(
    X: ColumnBlocks, y: np.ndarray, *, classes: int, records: int, max_iterations: int = MAX_ITERATIONS
) -> Generator[Fields, Mapping[str, np.ndarray], MultinomialFit]:
    """The fit as a conversation: yields this site's sums, receives the pooled sums, returns the fit."""
    d, free = X.count, classes - 1
    intercepts, slopes, null = np.zeros((d, free)), np.zeros((d, free)), np.zeros(free)
    previous: np.ndarray | None = None
    for iteration in range(1, max_iterations + 1):
        pooled = yield multinomial_sums(X, y, intercepts=intercepts, slopes=slopes, null=null)
        if int(pooled[RECORDS_FIELD][0]) != records:
            raise NewtonError(f"expected the Newton sums to cover the {records} pooled training records, got "
                              f"{int(pooled[RECORDS_FIELD][0])} (fix: no site may change its data during a run)")
        information = np.block([[pooled["info_aa_sum"], pooled["info_ab_sum"]],
                                [pooled["info_ab_sum"], pooled["info_bb_sum"]]])
        score = np.concatenate([pooled["score_a_sum"], pooled["score_b_sum"]], axis=1)
        step = cholesky_solve(information, score)
        null_step = cholesky_solve(pooled["null_info_sum"][None], pooled["null_score_sum"][None])[0]
        if not (np.isfinite(step).all() and np.isfinite(null_step).all()):
            singular = sorted({int(j) for j in np.flatnonzero(~np.isfinite(step).all(axis=1))})
            raise NewtonError(f"expected positive-definite information matrices, got singular ones for the models "
                              f"of encoded features {singular} (a constant column, or a class with no record)")
        intercepts, slopes, null = intercepts + step[:, :free], slopes + step[:, free:], null + null_step
        loglik = np.append(pooled["loglik_sum"], pooled["null_loglik_sum"])
        steps = np.append(np.abs(step).max(axis=1), np.abs(null_step).max(initial=0.0))
        settled = steps < STEP_TOLERANCE
        if previous is not None:
            settled |= np.abs(loglik - previous) <= LOGLIK_TOLERANCE * (1.0 + np.abs(loglik))
        if settled.all():
            return MultinomialFit(loglik=loglik[:-1].copy(), null_loglik=float(loglik[-1]), classes=classes,
                                  iterations=iteration)
        previous = loglik
    raise NewtonError(f"expected the federated Newton fit to settle within {max_iterations} iterations, "
                      f"{int((~settled).sum())} models did not (fix: list the features that separate the classes "
                      "under exclude)")


def multinomial_ranking(fit: MultinomialFit, *, k: int) -> tuple[list[int], list[float]]:
    """The k features with the largest LR statistic (ties by position) and their p-values (K-1 dof)."""
    statistics = np.maximum(fit.lrt_statistics(), 0.0)
    order = np.argsort(-statistics, kind="stable")[:k]
    return [int(j) for j in order], [float(p) for p in chi2.sf(statistics[order], df=fit.classes - 1)]
