"""A model's metrics at a site, and the same metrics pooled across sites without their records.

Why this module exists: each site measures the model on its own training and test records; the
federation's figure is the pooled one, as if every site's records were scored together. Every metric pools
from sums a site can share:

- binary: accuracy, log loss (record-weighted sums), ROC AUC. AUC is a ranking statistic and does not pool
  from per-site AUCs, so each site also keeps a histogram of its logits per label (clipped to [-10, 10], bins
  of 0.01, only non-empty bins); summed histograms give the pooled AUC, a positive and a negative in the
  same bin counting as half a correctly ranked pair. A site's own AUC is exact (ranks).
- multiclass: accuracy, cross-entropy, macro-F1 from per-class true positives, false positives and false
  negatives (exact: counts add). Macro-F1 averages over the classes that occur in the labels or the
  predictions, as scikit-learn does by default.
- regression: RMSE, MAE and R² in the user's units, from the sums of squared and absolute errors and of y and
  y² (R² = 1 - SSE / SST, SST about the pooled mean); `loss` is the training loss, the MSE of the
  standardised target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.special import log_softmax
from scipy.stats import rankdata

LOGIT_RANGE = 10.0
BIN_WIDTH = 0.01
METRICS = {
    "binary": ("accuracy", "loss", "auc"),
    "multiclass": ("accuracy", "loss", "macro_f1"),
    "regression": ("rmse", "mae", "r2", "loss"),
}
HEADLINE = {"binary": ("accuracy", "auc"), "multiclass": ("accuracy", "macro_f1"), "regression": ("rmse", "r2")}


class ScoreHistogram(BaseModel):
    """Counts of scores per bin (bin index -> count), separately for the positive and the negative label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    positives: dict[int, int] = {}
    negatives: dict[int, int] = {}


class SplitMetrics(BaseModel):
    """Metrics on one set of records (None where undefined), and the sums that pool them across sites."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: int
    values: dict[str, float | None] = {}
    sums: dict[str, float | list[float]] = {}
    histogram: ScoreHistogram | None = None

    def get(self, name: str) -> float | None:
        return self.values.get(name)


class RoundMetrics(BaseModel):
    """One site's metrics after one round (epoch), on its own training and test records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int
    train: SplitMetrics
    test: SplitMetrics
    epsilon: float | None = None  # differential privacy spent after this round, at the spec's delta

    def flat(self) -> dict[str, float | None]:
        """Each metric on training records (`accuracy`) and on test records (`accuracy_test`); `epsilon`."""
        values: dict[str, float | None] = dict(self.train.values)
        values.update({f"{name}_test": value for name, value in self.test.values.items()})
        if self.epsilon is not None:
            values["epsilon"] = self.epsilon
        return values


def score_bins(logits: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(logits, dtype=np.float64), -LOGIT_RANGE, LOGIT_RANGE)
    return np.floor((clipped + LOGIT_RANGE) / BIN_WIDTH).astype(np.int64)


def binary_metrics(y: np.ndarray, logits: np.ndarray, *, histogram: bool = True) -> SplitMetrics:
    """Accuracy (threshold: logit 0, probability 0.5), mean log loss and ROC AUC of logits against 0/1 labels."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if len(y) != len(z):
        raise ValueError(f"expected one logit per label, got {len(z)} logits for {len(y)} labels")
    if len(y) == 0:
        return SplitMetrics(records=0, histogram=ScoreHistogram() if histogram else None)
    correct = float(((z > 0) == (y > 0.5)).sum())
    loss = float((np.logaddexp(0.0, z) - y * z).sum())
    positives = y > 0.5
    hist = None
    if histogram:
        bins = score_bins(z)
        hist = ScoreHistogram(
            positives={int(b): int(c) for b, c in Counter(bins[positives].tolist()).items()},
            negatives={int(b): int(c) for b, c in Counter(bins[~positives].tolist()).items()},
        )
    n = len(y)
    return SplitMetrics(records=n, values={"accuracy": correct / n, "loss": loss / n, "auc": _rank_auc(z, positives)},
                        sums={"correct": correct, "loss": loss}, histogram=hist)


def multiclass_metrics(y: np.ndarray, logits: np.ndarray, classes: int) -> SplitMetrics:
    """Accuracy, mean cross-entropy and macro-F1 of (n, classes) logits against class indices."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    z = np.asarray(logits, dtype=np.float64).reshape(len(y), classes)
    if len(y) == 0:
        return SplitMetrics(records=0, sums={"tp": [0.0] * classes, "fp": [0.0] * classes, "fn": [0.0] * classes})
    predicted = z.argmax(axis=1)
    loss = float(-log_softmax(z, axis=1)[np.arange(len(y)), y].sum())
    tp = np.bincount(y[predicted == y], minlength=classes).astype(float)
    fp = np.bincount(predicted, minlength=classes).astype(float) - tp
    fn = np.bincount(y, minlength=classes).astype(float) - tp
    sums = {"correct": float(tp.sum()), "loss": loss, "tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist()}
    return _multiclass_from_sums(len(y), sums)


def _multiclass_from_sums(records: int, sums: dict) -> SplitMetrics:
    tp, fp, fn = (np.asarray(sums[k], dtype=float) for k in ("tp", "fp", "fn"))
    seen = (tp + fp + fn) > 0
    f1 = float(np.mean(2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen]))) if seen.any() else None
    return SplitMetrics(records=records, values={"accuracy": sums["correct"] / records, "loss": sums["loss"] / records,
                                                 "macro_f1": f1}, sums=sums)


def regression_metrics(y: np.ndarray, predicted: np.ndarray, *, mean: float, std: float) -> SplitMetrics:
    """RMSE, MAE and R² in the user's units, and the MSE of the standardised target (`loss`); `y` and
    `predicted` are standardised with the pooled target `mean` and `std`."""
    y_std = np.asarray(y, dtype=np.float64).reshape(-1)
    p_std = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if len(y_std) == 0:
        return SplitMetrics(records=0)
    y_user, error = y_std * std + mean, (p_std - y_std) * std
    sums = {"se": float(np.square(error).sum()), "ae": float(np.abs(error).sum()), "y": float(y_user.sum()),
            "y2": float(np.square(y_user).sum()), "loss": float(np.square(p_std - y_std).sum())}
    return _regression_from_sums(len(y_std), sums)


def _regression_from_sums(records: int, sums: dict) -> SplitMetrics:
    total = sums["y2"] - sums["y"] ** 2 / records
    r2 = 1.0 - sums["se"] / total if total > 0 else None
    return SplitMetrics(records=records, values={"rmse": float(np.sqrt(sums["se"] / records)),
                                                 "mae": sums["ae"] / records, "r2": r2,
                                                 "loss": sums["loss"] / records}, sums=sums)


def _rank_auc(z: np.ndarray, positives: np.ndarray) -> float | None:
    """Mann–Whitney AUC with ties counted as half; None with a single label."""
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(z)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def histogram_auc(histogram: ScoreHistogram) -> float | None:
    """AUC from binned scores: pairs in one bin count as half."""
    bins = sorted(set(histogram.positives) | set(histogram.negatives))
    n_pos, n_neg = sum(histogram.positives.values()), sum(histogram.negatives.values())
    if n_pos == 0 or n_neg == 0:
        return None
    below = 0
    ranked = 0.0
    for b in bins:
        pos, neg = histogram.positives.get(b, 0), histogram.negatives.get(b, 0)
        ranked += pos * (below + 0.5 * neg)
        below += neg
    return ranked / (n_pos * n_neg)


def _added(metrics: Sequence[SplitMetrics]) -> dict[str, float | list[float]]:
    total: dict[str, float | list[float]] = {}
    for m in metrics:
        for key, value in m.sums.items():
            if isinstance(value, list):
                previous = total.get(key, [0.0] * len(value))
                total[key] = [a + b for a, b in zip(previous, value, strict=True)]  # type: ignore[arg-type]
            else:
                total[key] = float(total.get(key, 0.0)) + value  # type: ignore[arg-type]
    return total


def pool(metrics: Sequence[SplitMetrics], task: str = "binary") -> SplitMetrics:
    """The metrics of all sites' records together, from the sites' sums (and histograms, for binary AUC)."""
    counted = [m for m in metrics if m.records > 0]
    records = sum(m.records for m in counted)
    if records == 0:
        return SplitMetrics(records=0)
    sums = _added(counted)
    if task == "multiclass":
        return _multiclass_from_sums(records, sums)
    if task == "regression":
        return _regression_from_sums(records, sums)
    positives: Counter[int] = Counter()
    negatives: Counter[int] = Counter()
    for m in counted:
        if m.histogram is None:
            raise ValueError("expected every site's metrics to carry a score histogram, got one without "
                             "(fix: compute them with binary_metrics(..., histogram=True))")
        positives.update(m.histogram.positives)
        negatives.update(m.histogram.negatives)
    histogram = ScoreHistogram(positives=dict(positives), negatives=dict(negatives))
    values = {"accuracy": float(sums["correct"]) / records, "loss": float(sums["loss"]) / records,  # type: ignore[arg-type]
              "auc": histogram_auc(histogram)}
    return SplitMetrics(records=records, values=values, sums=sums, histogram=histogram)
