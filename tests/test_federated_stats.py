"""Federated standardisation and LRT selection, in memory: the leaves' sums combined by the server's own
`FieldCombiner`, checked against numpy, statsmodels and the pooled `select_features`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.stats import chi2

from aggregator.analytics import FieldCombiner
from fedgrove.data import TARGET_COLUMN, feature_columns, load_dataset, split_dataset
from fedgrove.federated_stats import (
    MOMENT_SUFFIXES,
    Coefficients,
    NewtonDidNotConverge,
    NewtonFit,
    PooledSumsMismatch,
    TooFewRecords,
    field_names,
    fit_newton,
    leaf_records,
    lrt_selection,
    moment_sums,
    newton_sums,
    newton_update,
    pooled_moments,
    standardise,
)
from fedgrove.features import chi2_1dof_logsf, select_features

COLUMNS = feature_columns()
NAMES = field_names(COLUMNS)
SPLITS = ["iid", "dirichlet"]


def combine(archives: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """What the aggregator does with one aggregation's analytics archives on a branch with default op sum."""
    combiner = FieldCombiner(archives[0], configured={}, default="sum")
    for archive in archives:
        combiner.add(archive)
    return combiner.result()


def partitions(split: str) -> dict[str, pd.DataFrame]:
    _test, parts = split_dataset(load_dataset(), organisations=5, split=split, seed=0)  # type: ignore[arg-type]
    return parts


def federate(parts: dict[str, pd.DataFrame], *, max_iterations: int = 25) -> dict:
    """The protocol of tasks/preprocessing.py with the server replaced by `combine`."""
    leaves = [leaf_records(frame, COLUMNS, min_records=10) for frame in parts.values()]
    means, stds, n = pooled_moments(combine([moment_sums(values, NAMES) for values, _ in leaves]), NAMES)
    standardised = [(standardise(values, means, stds), y) for values, y in leaves]

    def pooled_sums_at(iteration: int, coefficients: Coefficients) -> dict[str, np.ndarray]:
        return combine([newton_sums(X, y, coefficients, iteration=iteration) for X, y in standardised])

    fit = fit_newton(pooled_sums_at, features=len(COLUMNS), max_iterations=max_iterations, records=n)
    return {"means": means, "stds": stds, "n": n, "fit": fit,
            "selection": lrt_selection(COLUMNS, fit=fit, means=means, stds=stds, k=4)}


def pooled_training(parts: dict[str, pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.concat(parts.values())
    return frame[COLUMNS].to_numpy(np.float64), frame[TARGET_COLUMN].to_numpy()


def statsmodels_fits(parts: dict[str, pd.DataFrame]) -> tuple[list, object]:
    """Each univariate `Logit` and the constant-only `Logit` on the pooled standardised training data.

    tol=1e-12: statsmodels' default (1e-8 on the parameters) is looser than the precision compared here. The
    null model is fitted explicitly because statsmodels' own `llnull` refits it by BFGS, which stops ~5e-10
    short of the optimum: enough to move the LR statistic of a useless feature (0.0005) by 2e-6 relative.
    """
    values, y = pooled_training(parts)
    X = (values - values.mean(axis=0)) / values.std(axis=0, ddof=0)
    fits = [sm.Logit(y, sm.add_constant(X[:, j])).fit(disp=0, tol=1e-12, maxiter=100) for j in range(X.shape[1])]
    return fits, sm.Logit(y, np.ones(len(y))).fit(disp=0, tol=1e-12, maxiter=100)


@pytest.fixture(scope="module", params=SPLITS)
def case(request) -> dict:
    parts = partitions(request.param)
    fits, null = statsmodels_fits(parts)
    return {"split": request.param, "parts": parts, "federated": federate(parts), "statsmodels": fits,
            "statsmodels_null": null}


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got) - np.asarray(expected)) / np.abs(np.asarray(expected))))


def test_pooled_means_and_population_stds_equal_numpy_on_the_concatenated_partitions(case) -> None:
    values, _y = pooled_training(case["parts"])
    assert case["federated"]["n"] == len(values)
    assert relative_error(case["federated"]["means"], values.mean(axis=0)) < 1e-9
    assert relative_error(case["federated"]["stds"], values.std(axis=0, ddof=0)) < 1e-9


def test_every_univariate_coefficient_equals_statsmodels_logit_on_the_pooled_data(case) -> None:
    fit: NewtonFit = case["federated"]["fit"]
    reference = np.array([result.params for result in case["statsmodels"]])
    assert relative_error(fit.coefficients.intercept, reference[:, 0]) < 1e-6
    assert relative_error(fit.coefficients.slope, reference[:, 1]) < 1e-6
    assert fit.coefficients.null_intercept == pytest.approx(case["statsmodels_null"].params[0], rel=1e-9)
    assert relative_error(fit.loglik, [result.llf for result in case["statsmodels"]]) < 1e-12
    assert fit.null_loglik == pytest.approx(case["statsmodels_null"].llf, rel=1e-12)


def test_every_lrt_p_value_equals_statsmodels_and_log_p_values_agree_where_p_underflows(case) -> None:
    fit: NewtonFit = case["federated"]["fit"]
    statistics = fit.lrt_statistics()
    reference = np.array([2.0 * (result.llf - case["statsmodels_null"].llf) for result in case["statsmodels"]])
    assert relative_error(statistics, reference) < 1e-6
    assert relative_error(chi2_1dof_logsf(statistics), chi2_1dof_logsf(reference)) < 1e-6
    p_values = np.array([result.llr_pvalue for result in case["statsmodels"]])  # statsmodels' own p-values
    representable = p_values > 0
    assert representable.sum() >= 25
    assert relative_error(chi2.sf(statistics, df=1)[representable], p_values[representable]) < 1e-6


def test_the_same_features_as_the_pooled_selection_are_chosen(case) -> None:
    pooled = select_features(pd.concat(case["parts"].values()), k=4)
    federated = case["federated"]["selection"]
    assert federated.method == "federated-lrt"
    assert federated.features == pooled.features
    np.testing.assert_allclose(federated.means, pooled.means, rtol=1e-9)
    np.testing.assert_allclose(federated.stds, pooled.stds, rtol=1e-9)
    np.testing.assert_allclose(federated.p_values, pooled.p_values, rtol=1e-6)


def test_newton_converges_within_25_iterations(case) -> None:
    fit: NewtonFit = case["federated"]["fit"]
    assert fit.iterations <= 25
    assert fit.max_steps[-1] < 1e-10
    assert len(fit.max_steps) == fit.iterations


def test_newton_that_cannot_settle_in_the_allowed_iterations_fails_with_a_clear_error() -> None:
    with pytest.raises(NewtonDidNotConverge, match="within 3 iterations"):
        federate(partitions("iid"), max_iterations=3)


def test_a_leaf_under_min_records_refuses_to_take_part() -> None:
    frame = partitions("iid")["org-1"].head(9)
    with pytest.raises(TooFewRecords, match="expected at least 10 training records .* got 9"):
        leaf_records(frame, COLUMNS, min_records=10)
    values, _ = leaf_records(frame, COLUMNS, min_records=9)
    assert values.shape == (9, 30)


def test_every_field_name_is_archive_safe_and_avoids_the_bundle_suffixes_unless_summed() -> None:
    values, y = leaf_records(partitions("iid")["org-1"], COLUMNS)
    fields = {**moment_sums(values, NAMES), **newton_sums(values, y, Coefficients.zeros(30), iteration=1)}
    for name in fields:
        assert name.replace("_", "").isalnum() and not name.startswith("layer_") and name != "weighting"
    combined = combine([fields, fields])
    for name, array in fields.items():
        np.testing.assert_array_equal(combined[name], 2 * array)  # every field is summed, none min/max


def test_pooled_moments_read_a_combined_save_analytics_bundle_too() -> None:
    """The four summed entries of the official bundle carry the same names; `_min`/`_max` are ignored."""
    parts = partitions("iid")
    bundles = []
    for frame in parts.values():
        values, _ = leaf_records(frame, COLUMNS)
        bundle = moment_sums(values, NAMES)
        for j, name in enumerate(NAMES):
            bundle[f"{name}_min"] = np.array([values[:, j].min()])
            bundle[f"{name}_max"] = np.array([values[:, j].max()])
        bundles.append(bundle)
    means, stds, n = pooled_moments(combine(bundles), NAMES)
    values, _ = pooled_training(parts)
    assert n == len(values)
    assert relative_error(means, values.mean(axis=0)) < 1e-9
    assert relative_error(stds, values.std(axis=0)) < 1e-9


def test_pooled_moments_refuse_a_constant_column_and_missing_fields() -> None:
    values = np.column_stack([np.arange(12.0), np.full(12, 3.7)])
    with pytest.raises(PooledSumsMismatch, match=r"constant \['f01'\]"):
        pooled_moments(moment_sums(values, ["f00", "f01"]), ["f00", "f01"])
    partial = {k: v for k, v in moment_sums(values, ["f00", "f01"]).items() if not k.startswith("f01")}
    with pytest.raises(PooledSumsMismatch, match="missing"):
        pooled_moments(partial, ["f00", "f01"])
    assert MOMENT_SUFFIXES == ("n", "nan", "sum", "sumsq")


def test_a_perfectly_separating_feature_stops_newton_with_a_clear_error() -> None:
    x = np.concatenate([np.linspace(-2, -1, 10), np.linspace(1, 2, 10)])[:, None]
    y = (x[:, 0] > 0).astype(np.float64)

    def pooled_sums_at(iteration: int, coefficients: Coefficients) -> dict[str, np.ndarray]:
        return newton_sums(x, y, coefficients, iteration=iteration)

    with pytest.raises(NewtonDidNotConverge):
        fit_newton(pooled_sums_at, features=1, max_iterations=25)


def test_every_leaf_derives_bit_identical_coefficients_from_the_same_pooled_sums() -> None:
    parts = partitions("dirichlet")
    values, y = leaf_records(next(iter(parts.values())), COLUMNS)
    X = standardise(values, values.mean(axis=0), values.std(axis=0))
    pooled = newton_sums(X, y, Coefficients.zeros(30), iteration=1)
    first, second = newton_update(Coefficients.zeros(30), pooled), newton_update(Coefficients.zeros(30), pooled)
    assert first[0].slope.tobytes() == second[0].slope.tobytes() and first[1] == second[1]


def test_a_late_retry_of_an_earlier_iteration_aggregated_with_the_others_stops_every_leaf() -> None:
    """The retry of an upload whose 201 was lost can land in the next aggregation: the tags give it away."""
    leaves = [leaf_records(frame, COLUMNS) for frame in partitions("iid").values()]
    X = [standardise(values, values.mean(axis=0), values.std(axis=0)) for values, _ in leaves]

    def pooled_sums_at(iteration: int, coefficients: Coefficients) -> dict[str, np.ndarray]:
        tags = [iteration - 1 if iteration == 3 and i == 0 else iteration for i in range(len(leaves))]
        return combine([newton_sums(x, y, coefficients, iteration=tag)
                        for x, (_values, y), tag in zip(X, leaves, tags, strict=True)])

    with pytest.raises(PooledSumsMismatch, match="iteration 3 to sum their iteration tags to 15, got 14"):
        fit_newton(pooled_sums_at, features=len(COLUMNS))
