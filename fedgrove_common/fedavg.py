"""Federated averaging as pure arithmetic over lists of arrays, folded one contribution at a time.

The aggregation server and the in-memory simulation both average with this, so there is one FedAvg.

    total = WeightedSum(first_arrays)        # the shapes and dtypes every contribution must have
    total.add(arrays, weighting)             # once per contribution (a sample count, say)
    total.mean()                             # Σ weighting × arrays / Σ weighting, in each array's dtype

`WeightedSum` keeps a float64 running sum of weighting × array and the total weighting, so memory is one
model's size whatever the number of contributions, and the mean is a single division. `weighted_mean` does
the same over a list.

Every value may be finite and weighting × value, or the sum of many, still pass float64's range (a weighting
of 1e308): one contribution would turn the mean into Inf and NaN. `check` refuses such a contribution before
anything is added, from a bound kept as it goes: Σ weighting × largest |value|.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_CHUNK = 1 << 18  # 2 MiB of float64: stays in cache between the multiply and the add
_FLOAT64_MAX = float(np.finfo(np.float64).max)


class LayerMismatch(ValueError):
    """A contribution's arrays do not match the template's (count, shape or dtype)."""


class SumOverflow(ValueError):
    """Adding a contribution could take the float64 sum or the total weighting past float64's range."""


def magnitude(values: np.ndarray) -> float:
    """The largest |value| of a numeric array: `math.inf` if it holds NaN or Inf (max and min propagate
    both, so they check finiteness in the same passes), 0.0 when empty or not numeric."""
    if values.dtype.kind not in "iuf" or not values.size:
        return 0.0
    high, low = float(values.max()), float(values.min())
    if not (math.isfinite(high) and math.isfinite(low)):
        return math.inf
    return max(abs(high), abs(low))


def largest_magnitude(arrays: Sequence[np.ndarray]) -> float:
    """The largest `magnitude` over all arrays (0.0 for none)."""
    return max((magnitude(array) for array in arrays), default=0.0)


class WeightedSum:
    def __init__(self, template: Sequence[np.ndarray]) -> None:
        self.shapes = [array.shape for array in template]
        self.dtypes = [array.dtype for array in template]
        self.sums = [np.zeros(array.shape, dtype=np.float64) for array in template]
        self.total_weight = 0.0
        self.count = 0
        self.bound = 0.0  # Σ weighting × largest |value|: no element of the sums can be larger
        # One float64 buffer for every add: a new one each time cost the server fresh pages per upload.
        self._buffer = np.empty(min(_CHUNK, max((array.size for array in template), default=0)), dtype=np.float64)

    def check(self, arrays: Sequence[np.ndarray], weighting: float, *, magnitude: float | None = None) -> None:
        """LayerMismatch or SumOverflow if the contribution cannot be added; `magnitude` is its largest
        |value| (`largest_magnitude`, computed when not given)."""
        shapes = [(array.shape, array.dtype) for array in arrays]
        if shapes != list(zip(self.shapes, self.dtypes, strict=True)):
            raise LayerMismatch(f"expected arrays of shapes and dtypes {list(zip(self.shapes, self.dtypes))}, "
                                f"got {shapes}")
        magnitude = largest_magnitude(arrays) if magnitude is None else magnitude
        fix = "send a smaller weighting (the number of samples the leaf trained on)"
        if not self.total_weight + weighting <= _FLOAT64_MAX:
            raise SumOverflow(f"weighting {weighting:g} would take the aggregation's total weighting past "
                              f"{_FLOAT64_MAX:.4g}; {fix}")
        if not self.bound + weighting * magnitude <= _FLOAT64_MAX:
            raise SumOverflow(f"weighting {weighting:g} × the archive's largest value {magnitude:g} could take the "
                              f"aggregation's float64 sum past {_FLOAT64_MAX:.4g}; {fix}")

    def add(self, arrays: Sequence[np.ndarray], weighting: float, *, magnitude: float | None = None) -> None:
        """Add weighting × arrays to the sums (after `check`, which it runs)."""
        magnitude = largest_magnitude(arrays) if magnitude is None else magnitude
        self.check(arrays, weighting, magnitude=magnitude)
        buffer = self._buffer
        for running, array in zip(self.sums, arrays, strict=True):
            flat_sum, flat_array = running.reshape(-1), array.reshape(-1)
            # In chunks through one float64 buffer: no full-size temporary for a large array.
            for start in range(0, flat_array.size, _CHUNK):
                stop = min(start + _CHUNK, flat_array.size)
                scaled = np.multiply(flat_array[start:stop], weighting, dtype=np.float64, out=buffer[: stop - start])
                flat_sum[start:stop] += scaled
        self.total_weight += weighting
        self.bound += weighting * magnitude
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        """Σ weighting × arrays / Σ weighting, each in its template array's dtype; ValueError before any
        positive weighting was added."""
        if self.total_weight <= 0:
            raise ValueError("expected contributions with a positive total weighting, got none")
        # Divided straight into the array's dtype: no float64 temporary the size of the model.
        return [
            np.divide(running, self.total_weight, out=np.empty(running.shape, dtype), casting="unsafe")
            for running, dtype in zip(self.sums, self.dtypes, strict=True)
        ]


def weighted_mean(contributions: Sequence[tuple[Sequence[np.ndarray], float]]) -> list[np.ndarray]:
    """FedAvg of (arrays, weighting) pairs: `WeightedSum.mean` after adding each in turn."""
    if not contributions:
        raise ValueError("expected at least one (arrays, weighting) pair, got none")
    total = WeightedSum(contributions[0][0])
    for arrays, weighting in contributions:
        total.add(arrays, weighting)
    return total.mean()
