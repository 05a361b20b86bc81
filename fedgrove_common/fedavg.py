"""Federated averaging as pure arithmetic over lists of arrays, folded one contribution at a time.

The aggregation server and the in-memory simulation both average with this, so there is one FedAvg.

    total = WeightedSum(first_arrays)        # the shapes and dtypes every contribution must have
    total.add(arrays, weighting)             # once per contribution (a sample count, say)
    total.remove(arrays, weighting)          # take one back out (a contribution replaced), if it can be
    total.mean()                             # Σ weighting × arrays / Σ weighting, in each array's dtype

`WeightedSum` keeps a float64 running sum of weighting × array and the total weighting, so memory is one
model's size whatever the number of contributions, and the mean is a single division. `weighted_mean` does
the same over a list.

Every value may be finite and weighting × value, or the sum of many, still pass float64's range (a weighting
of 1e308): one contribution would turn the mean into Inf and NaN. `check` refuses such a contribution before
anything is added, from a bound kept as it goes: Σ weighting × largest |value|.

`remove` subtracts a contribution again. The sums then differ from those never given it by float64 rounding
only, at most ~2**-32 of the largest remaining contribution: below what float32 layers can hold. A
contribution more than `REMOVABLE_RATIO` times larger than all the others together could leave more than
that, so `remove` refuses it (returns False) and the caller adds the others to a new `WeightedSum` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_CHUNK = 1 << 18  # 2 MiB of float64: stays in cache between the multiply and the add
_FLOAT64_MAX = float(np.finfo(np.float64).max)
REMOVABLE_RATIO = 2.0**20


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
        self._terms: list[tuple[float, float]] = []  # (weighting, weighting × largest |value|) of each added
        # One float64 buffer for every add: a new one each time cost the server fresh pages per upload.
        self._buffer = np.empty(min(_CHUNK, max((array.size for array in template), default=0)), dtype=np.float64)

    @property
    def total_weight(self) -> float:
        return math.fsum(weighting for weighting, _ in self._terms)

    @property
    def bound(self) -> float:
        """Σ weighting × largest |value|: no element of the sums can be larger."""
        return math.fsum(term for _, term in self._terms)

    @property
    def count(self) -> int:
        return len(self._terms)

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
        self._accumulate(arrays, weighting)
        self._terms.append((weighting, weighting * magnitude))

    def remove(self, arrays: Sequence[np.ndarray], weighting: float, *, magnitude: float | None = None) -> bool:
        """Subtract a contribution `add` took, exactly as it was given; False, changing nothing, when it is more
        than `REMOVABLE_RATIO` times all the others (its rounding would show): add those to a new sum instead."""
        magnitude = largest_magnitude(arrays) if magnitude is None else magnitude
        term = (weighting, weighting * magnitude)
        if term not in self._terms:
            raise ValueError(f"expected a contribution that was added (weighting {weighting:g}), got another")
        rest = list(self._terms)
        rest.remove(term)
        if not rest:  # the only one: back to nothing, exactly
            for running in self.sums:
                running.fill(0.0)
        elif term[1] > REMOVABLE_RATIO * math.fsum(other for _, other in rest):
            return False
        else:
            self._accumulate(arrays, -weighting)
        self._terms = rest
        return True

    def _accumulate(self, arrays: Sequence[np.ndarray], weighting: float) -> None:
        buffer = self._buffer
        for running, array in zip(self.sums, arrays, strict=True):
            flat_sum, flat_array = running.reshape(-1), array.reshape(-1)
            # In chunks through one float64 buffer: no full-size temporary for a large array.
            for start in range(0, flat_array.size, _CHUNK):
                stop = min(start + _CHUNK, flat_array.size)
                scaled = np.multiply(flat_array[start:stop], weighting, dtype=np.float64, out=buffer[: stop - start])
                flat_sum[start:stop] += scaled

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
