"""Feature selection by univariate likelihood-ratio tests, and the standardisation handed to every leaf."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from scipy.stats import chi2

from fedgrove.data import TARGET_COLUMN, load_dataset, split_dataset
from fedgrove.features import (
    FeatureSelection,
    chi2_1dof_logsf,
    lrt_log_p_values,
    lrt_p_values,
    select_features,
)
from fedgrove.model import TrainConfig
from fedgrove.simulation import train_alone

FRAME = load_dataset()
STRONG = ["worst perimeter", "worst radius", "worst area", "worst concave points"]


def _training(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    test, partitions = split_dataset(FRAME, organisations=5, seed=seed)
    return pd.concat(partitions.values()), test


def test_lrt_p_values_equal_a_direct_statsmodels_computation() -> None:
    train, _ = _training(0)
    X = train[["mean radius", "mean texture", "mean smoothness", "texture error", "worst perimeter"]].to_numpy()
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    y = train[TARGET_COLUMN].to_numpy()
    direct = [sm.Logit(y, sm.add_constant(X[:, j])).fit(disp=0).llr_pvalue for j in range(X.shape[1])]
    np.testing.assert_allclose(lrt_p_values(X, y), direct, rtol=1e-9, atol=0)


def test_chi2_log_survival_matches_scipy_where_scipy_is_finite_and_stays_finite_beyond() -> None:
    statistics = np.array([0.0, 0.5, 3.84, 100.0, 548.7, 1400.0])
    np.testing.assert_allclose(chi2_1dof_logsf(statistics), chi2.logsf(statistics, df=1), rtol=1e-12)
    assert chi2.logsf(3000.0, df=1) == -np.inf
    assert chi2_1dof_logsf(np.array([3000.0]))[0] == pytest.approx(-1504.2293081924815, rel=1e-12)


def test_log_p_values_still_rank_features_whose_p_values_underflow_to_zero() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 3))
    logits = 3.0 * x[:, 0] + 1.5 * x[:, 1]
    y = (rng.random(20_000) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    assert list(lrt_p_values(x[:, :2], y)) == [0.0, 0.0]
    log_p = lrt_log_p_values(x, y)
    assert np.isfinite(log_p).all()
    assert log_p[0] < log_p[1] < log_p[2]
    frame = pd.DataFrame({"weak": x[:, 2], "medium": x[:, 1], "strong": x[:, 0], TARGET_COLUMN: y})
    assert select_features(frame, k=2).features == ["strong", "medium"]


def test_select_features_keeps_the_four_features_lrt_ranks_first_with_their_pooled_statistics() -> None:
    train, _ = _training(0)
    selection = select_features(train, k=4)
    assert selection.features == STRONG
    assert selection.method == "pooled-lrt"
    candidates = [c for c in train.columns if c != TARGET_COLUMN]
    values = train[candidates].to_numpy()
    standardised = (values - values.mean(axis=0)) / values.std(axis=0, ddof=0)
    ranked = np.argsort(lrt_log_p_values(standardised, train[TARGET_COLUMN].to_numpy()))
    assert selection.features == [candidates[j] for j in ranked[:4]]
    np.testing.assert_allclose(selection.means, train[STRONG].mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(selection.stds, train[STRONG].std(ddof=0).to_numpy(), rtol=1e-12)
    assert selection.p_values == sorted(selection.p_values)
    assert 0.0 < selection.p_values[-1] < 1e-80


def test_selected_features_give_at_least_93_percent_mean_test_accuracy_and_beat_wald_picks() -> None:
    """Over seeds 0..2 (seed 0's test set is the hardest: 0.93 alone), trained like the centralised baseline."""
    lrt_accuracy, wald_accuracy = [], []
    for seed in range(3):
        train, test = _training(seed)
        candidates = [c for c in train.columns if c != TARGET_COLUMN]
        y = train[TARGET_COLUMN].to_numpy()
        values = train[candidates].to_numpy()
        means, stds = values.mean(axis=0), values.std(axis=0)
        standardised = (values - means) / stds
        wald = np.array([sm.Logit(y, sm.add_constant(standardised[:, j])).fit(disp=0).pvalues[1]
                         for j in range(len(candidates))])
        picks = np.argsort(wald)[:4]
        selections = [
            select_features(train, k=4),
            FeatureSelection(features=[candidates[j] for j in picks], means=list(means[picks]),
                             stds=list(stds[picks]), p_values=list(wald[picks]), method="pooled-wald"),
        ]
        for selection, results in zip(selections, (lrt_accuracy, wald_accuracy), strict=True):
            history = train_alone(selection.transform(train), y, selection.transform(test),
                                  test[TARGET_COLUMN].to_numpy(), epochs=50, config=TrainConfig(), seed=seed)
            results.append(history[-1].accuracy_test)
    assert np.mean(lrt_accuracy) >= 0.93
    assert np.mean(lrt_accuracy) > np.mean(wald_accuracy)


def test_feature_selection_round_trips_through_json() -> None:
    selection = select_features(_training(1)[0], k=4)
    assert FeatureSelection.model_validate_json(selection.model_dump_json()) == selection


def test_transform_standardises_the_selected_columns_in_order_as_float32() -> None:
    selection = FeatureSelection(features=["b", "a"], means=[10.0, 1.0], stds=[2.0, 0.5], p_values=[0.1, 0.2],
                                 method="test")
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [10.0, 14.0], "c": [5.0, 5.0]})
    out = selection.transform(frame)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0], [2.0, 2.0]], dtype=np.float32))


def test_transform_names_the_missing_columns() -> None:
    selection = FeatureSelection(features=["b", "a", "z"], means=[0.0] * 3, stds=[1.0] * 3, p_values=[0.1] * 3,
                                 method="test")
    with pytest.raises(ValueError) as caught:
        selection.transform(pd.DataFrame({"a": [1.0]}))
    assert str(caught.value) == ("expected columns ['b', 'z'] in the frame, they are missing (got 1 columns; "
                                 "fix: pass records with every selected feature)")


def test_feature_selection_rejects_lists_of_unequal_length() -> None:
    with pytest.raises(ValueError, match="expected features, means, stds and p_values of one equal, non-zero "
                                         "length, got 2, 1, 2, 2"):
        FeatureSelection(features=["a", "b"], means=[0.0], stds=[1.0, 1.0], p_values=[0.1, 0.1], method="x")


def test_select_features_rejects_a_frame_without_target() -> None:
    with pytest.raises(ValueError, match=r"^expected a 'target' column, it is missing"):
        select_features(FRAME.drop(columns=[TARGET_COLUMN]))
