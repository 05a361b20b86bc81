"""Binary-classification metrics at a site, and the same metrics pooled across sites without their records.

Why this module exists: each site measures the model on its own training and test records; the
federation's figure is the pooled one, as if every site's test records were scored together. Accuracy and
log loss pool exactly (sums over records, weighted by record counts). ROC AUC is a ranking statistic and
does not pool from per-site AUCs, so each site also keeps a histogram of its scores per label: logits
clipped to [-10, 10] in bins of 0.01 (sparse: only non-empty bins). Summed histograms give the pooled AUC,
counting a positive and a negative in the same bin as half a correctly ranked pair; the error is at most
half the share of such pairs (see docs/federated-preprocessing.md). A site's own AUC is exact (ranks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import rankdata

LOGIT_RANGE = 10.0
BIN_WIDTH = 0.01
METRIC_NAMES = ("accuracy", "loss", "auc")


class ScoreHistogram(BaseModel):
    """Counts of scores per bin (bin index -> count), separately for the positive and the negative label."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    positives: dict[int, int] = {}
    negatives: dict[int, int] = {}


class SplitMetrics(BaseModel):
    """Metrics on one set of records. None where undefined (no records; AUC with a single label)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: int
    accuracy: float | None = None
    loss: float | None = None
    auc: float | None = None
    histogram: ScoreHistogram | None = None


class RoundMetrics(BaseModel):
    """One site's metrics after one round (epoch), on its own training and test records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int
    train: SplitMetrics
    test: SplitMetrics

    def flat(self) -> dict[str, float | None]:
        """`accuracy, loss, auc` on training records and `accuracy_test, loss_test, auc_test` on test records."""
        values: dict[str, float | None] = {}
        for suffix, split in (("", self.train), ("_test", self.test)):
            for name in METRIC_NAMES:
                values[f"{name}{suffix}"] = getattr(split, name)
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
    accuracy = float(((z > 0) == (y > 0.5)).mean())
    loss = float((np.logaddexp(0.0, z) - y * z).mean())
    positives = y > 0.5
    auc = _rank_auc(z, positives)
    hist = None
    if histogram:
        bins = score_bins(z)
        hist = ScoreHistogram(
            positives={int(b): int(c) for b, c in Counter(bins[positives].tolist()).items()},
            negatives={int(b): int(c) for b, c in Counter(bins[~positives].tolist()).items()},
        )
    return SplitMetrics(records=len(y), accuracy=accuracy, loss=loss, auc=auc, histogram=hist)


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


def pool(metrics: Sequence[SplitMetrics]) -> SplitMetrics:
    """The metrics of all sites' records together: accuracy and loss weighted by records, AUC from summed
    histograms."""
    counted = [m for m in metrics if m.records > 0]
    records = sum(m.records for m in counted)
    if records == 0:
        return SplitMetrics(records=0)
    accuracy = sum(m.records * m.accuracy for m in counted if m.accuracy is not None) / records
    loss = sum(m.records * m.loss for m in counted if m.loss is not None) / records
    positives: Counter[int] = Counter()
    negatives: Counter[int] = Counter()
    for m in counted:
        if m.histogram is None:
            raise ValueError("expected every site's metrics to carry a score histogram, got one without "
                             "(fix: compute them with binary_metrics(..., histogram=True))")
        positives.update(m.histogram.positives)
        negatives.update(m.histogram.negatives)
    histogram = ScoreHistogram(positives=dict(positives), negatives=dict(negatives))
    return SplitMetrics(records=records, accuracy=float(accuracy), loss=float(loss), auc=histogram_auc(histogram),
                        histogram=histogram)
