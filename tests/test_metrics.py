"""Metrics at a site and pooled across sites: exact accuracy and loss, AUC from score histograms."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from fedgrove.metrics import BIN_WIDTH, binary_metrics, histogram_auc, pool

RNG = np.random.default_rng(3)


def scored(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    y = (RNG.random(n) < 0.4).astype(float)
    return y, RNG.normal(size=n) + shift * y


def test_site_metrics_equal_scikit_learn() -> None:
    y, z = scored(300, 1.5)
    m = binary_metrics(y, z)
    assert m.records == 300
    assert m.get("accuracy") == pytest.approx(np.mean((z > 0) == (y == 1)))
    assert m.get("loss") == pytest.approx(log_loss(y, 1 / (1 + np.exp(-z))), rel=1e-9)
    assert m.get("auc") == pytest.approx(roc_auc_score(y, z), rel=1e-12)


def test_pooled_accuracy_and_loss_equal_the_metrics_of_all_records_together() -> None:
    parts = [scored(n, 1.0) for n in (40, 300, 7)]
    pooled = pool([binary_metrics(y, z) for y, z in parts])
    y = np.concatenate([p[0] for p in parts])
    z = np.concatenate([p[1] for p in parts])
    whole = binary_metrics(y, z)
    assert pooled.records == 347
    assert pooled.get("accuracy") == pytest.approx(whole.get("accuracy"), rel=1e-12)
    assert pooled.get("loss") == pytest.approx(whole.get("loss"), rel=1e-12)


def test_pooled_auc_from_histograms_is_within_the_share_of_pairs_sharing_a_bin() -> None:
    parts = [scored(n, 1.2) for n in (500, 80, 1200)]
    pooled = pool([binary_metrics(y, z) for y, z in parts])
    y = np.concatenate([p[0] for p in parts])
    z = np.concatenate([p[1] for p in parts])
    exact = roc_auc_score(y, z)
    bins = np.floor((np.clip(z, -10, 10) + 10) / BIN_WIDTH)
    positives, negatives = bins[y == 1], bins[y == 0]
    shared = sum(int((negatives == b).sum()) for b in positives) / (len(positives) * len(negatives))
    assert abs(pooled.get("auc") - exact) <= shared / 2 + 1e-12
    assert abs(pooled.get("auc") - exact) < 1e-3


def test_auc_is_undefined_with_one_label_and_metrics_are_undefined_without_records() -> None:
    assert binary_metrics(np.ones(5), np.arange(5.0)).get("auc") is None
    empty = binary_metrics(np.zeros(0), np.zeros(0))
    assert (empty.records, empty.get("accuracy"), empty.get("loss"), empty.get("auc")) == (0, None, None, None)
    assert histogram_auc(binary_metrics(np.zeros(3), np.arange(3.0)).histogram) is None


def test_a_site_with_one_label_still_counts_in_the_pooled_auc() -> None:
    only_negatives = binary_metrics(np.zeros(4), np.array([-3.0, -2.0, -1.0, 0.5]))
    mixed = binary_metrics(np.array([1.0, 0.0]), np.array([2.0, -5.0]))
    pooled = pool([only_negatives, mixed])
    expected = roc_auc_score([0, 0, 0, 0, 1, 0], [-3.0, -2.0, -1.0, 0.5, 2.0, -5.0])
    assert pooled.get("auc") == pytest.approx(expected)
