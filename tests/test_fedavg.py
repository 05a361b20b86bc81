"""`fedgrove_common.fedavg` on its own, against means computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrove_common.fedavg import LayerMismatch, SumOverflow, WeightedSum, weighted_mean


def test_each_array_is_the_weighted_mean_in_its_own_dtype() -> None:
    one = [np.array([[1.0, 2.0]], np.float32), np.array([10.0])]
    three = [np.array([[4.0, 8.0]], np.float32), np.array([-2.0])]

    mean = weighted_mean([(one, 1.0), (three, 3.0)])

    np.testing.assert_array_equal(mean[0], np.array([[3.25, 6.5]], np.float32))  # (1 + 12) / 4, (2 + 24) / 4
    np.testing.assert_array_equal(mean[1], np.array([1.0]))  # (10 - 6) / 4
    assert [array.dtype for array in mean] == [np.float32, np.float64]


def test_a_contribution_that_could_pass_float64s_range_is_refused_and_changes_nothing() -> None:
    total = WeightedSum([np.zeros(2)])
    total.add([np.array([1e300, -1.0])], 1e7)

    with pytest.raises(SumOverflow, match="could take the aggregation's float64 sum past 1.798e\\+308"):
        total.add([np.array([2e300, 3.0])], 1e8)  # 1e307 + 2e308 is past 1.798e308

    total.add([np.array([3.0, 1.0])], 1.0)
    expected = [(1e300 * 1e7 + 3.0) / (1e7 + 1.0), (-1e7 + 1.0) / (1e7 + 1.0)]
    np.testing.assert_array_equal(total.mean(), [np.array(expected)])


def test_arrays_of_another_shape_or_dtype_are_refused() -> None:
    total = WeightedSum([np.zeros((2, 3), np.float32)])

    with pytest.raises(LayerMismatch):
        total.add([np.zeros((3, 2), np.float32)], 1.0)
    with pytest.raises(LayerMismatch):
        total.add([np.zeros((2, 3), np.float64)], 1.0)
    with pytest.raises(ValueError, match="^expected contributions with a positive total weighting, got none$"):
        total.mean()


def test_a_contribution_taken_back_out_leaves_the_others_mean_and_one_dwarfing_them_is_refused() -> None:
    total = WeightedSum([np.zeros(2)])
    total.add([np.array([1.0, 2.0])], 1.0)
    total.add([np.array([5.0, 4.0])], 3.0)

    assert total.remove([np.array([5.0, 4.0])], 3.0)
    np.testing.assert_array_equal(total.mean(), [np.array([1.0, 2.0])])

    total.add([np.array([1e30, 0.0])], 1.0)
    assert not total.remove([np.array([1e30, 0.0])], 1.0)  # 1e30 - 1e30 would leave 1.0 + 1e30 - 1e30 = 0
    assert (total.count, total.total_weight) == (2, 2.0)
