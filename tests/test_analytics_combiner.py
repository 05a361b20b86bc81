"""The server's `FieldCombiner` on its own: sums in 64 bits that must fit the field's dtype, and every other
operation in the dtype the leaves sent."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.analytics import FieldCombiner, FieldOverflow


def _combined(*archives: dict[str, np.ndarray], default: str = "sum") -> dict[str, np.ndarray]:
    combiner = FieldCombiner(archives[0], configured={}, default=default)
    for archive in archives:
        combiner.add(archive)
    return combiner.result()


def test_a_sum_that_fits_the_fields_dtype_is_exact_and_keeps_it() -> None:
    result = _combined({"x_n": np.array([100, -128], np.int8)}, {"x_n": np.array([27, 0], np.int8)})

    assert result["x_n"].dtype == np.int8
    np.testing.assert_array_equal(result["x_n"], [127, -128])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (np.array([2**63], np.uint64), np.array([2**63], np.uint64)),  # wraps to 0 in 64 bits
        (np.array([-(2**62)], np.int64), np.array([-(2**62) - 1], np.int64)),  # one past int64's minimum
        (np.array([np.finfo(np.float64).max]), np.array([np.finfo(np.float64).max])),
        (np.array([250], np.uint8), np.array([6], np.uint8)),
    ],
    ids=["uint64", "int64-low", "float64", "uint8"],
)
def test_a_sum_past_the_fields_dtype_is_refused_and_the_running_value_is_kept(
    first: np.ndarray, second: np.ndarray
) -> None:
    combiner = FieldCombiner({"x_sum": first}, configured={}, default=None)
    combiner.add({"x_sum": first})

    with pytest.raises(FieldOverflow, match=f"would not fit its dtype {first.dtype}"):
        combiner.check({"x_sum": second})

    np.testing.assert_array_equal(combiner.result()["x_sum"], first)


@pytest.mark.parametrize(("operation", "expected"), [("min", [-3, 4]), ("max", [7, 9]), ("must_match", None)])
def test_min_max_and_must_match_keep_the_fields_dtype(operation: str, expected: list[int] | None) -> None:
    one, two = np.array([7, 4], np.int16), np.array([-3, 9], np.int16)
    archives = ({"x": one}, {"x": one}) if operation == "must_match" else ({"x": one}, {"x": two})

    result = _combined(*archives, default=operation)["x"]

    assert result.dtype == np.int16
    np.testing.assert_array_equal(result, one if expected is None else expected)
