"""Federated averaging as pure arithmetic over arrays, folded one contribution at a time.

`WeightedSum` keeps a float64 running sum of weighting × layer and the total weighting, so memory is
one model's size whatever the number of leaves, and finishing an aggregation is a single division.
`weighted_mean` is the same arithmetic over a list, for tests and benchmarks.

Every value a leaf sends is finite, but weighting × value, or the sum of many, can still pass float64's
range (a weighting of 1e308): one leaf would turn the aggregate into Inf and NaN. `check` refuses such a
contribution before anything is folded, from a bound kept as it goes: Σ weighting × largest |value|.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


_CHUNK = 1 << 18  # 2 MiB of float64: stays in cache between the multiply and the add
_FLOAT64_MAX = float(np.finfo(np.float64).max)


class LayerMismatch(ValueError):
    """A contribution's layers do not match the aggregation's (count, shape or dtype)."""


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


def largest_magnitude(layers: Sequence[np.ndarray]) -> float:
    """The largest `magnitude` over all layers (0.0 for none)."""
    return max((magnitude(layer) for layer in layers), default=0.0)


def describe_mismatch(expected: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> str | None:
    if len(expected) != len(got):
        return f"archive has {len(got)} layers; the open aggregation expects {len(expected)}"
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want.shape != have.shape or want.dtype != have.dtype:
            return (
                f"layer_{index} has shape {have.shape} and dtype {have.dtype}; "
                f"the open aggregation expects shape {want.shape} and dtype {want.dtype}"
            )
    return None


class WeightedSum:
    def __init__(self, template: Sequence[np.ndarray]) -> None:
        self.shapes = [layer.shape for layer in template]
        self.dtypes = [layer.dtype for layer in template]
        self.sums = [np.zeros(layer.shape, dtype=np.float64) for layer in template]
        self.total_weight = 0.0
        self.count = 0
        self.bound = 0.0  # Σ weighting × largest |value|: no element of the sums can be larger
        # One float64 buffer for every add: a new one each time cost the server fresh pages per upload.
        self._buffer = np.empty(min(_CHUNK, max((layer.size for layer in template), default=0)), dtype=np.float64)

    def check(self, layers: Sequence[np.ndarray], *, weighting: float, magnitude: float) -> None:
        """LayerMismatch or SumOverflow if the contribution cannot be added; `magnitude` is its largest
        |value| (`largest_magnitude`)."""
        expected = [np.empty(shape, dtype) for shape, dtype in zip(self.shapes, self.dtypes, strict=True)]
        problem = describe_mismatch(expected, layers)
        if problem:
            raise LayerMismatch(problem)
        fix = "send a smaller weighting (the number of samples the leaf trained on)"
        if not self.total_weight + weighting <= _FLOAT64_MAX:
            raise SumOverflow(f"weighting {weighting:g} would take the aggregation's total weighting past "
                              f"{_FLOAT64_MAX:.4g}; {fix}")
        if not self.bound + weighting * magnitude <= _FLOAT64_MAX:
            raise SumOverflow(f"weighting {weighting:g} × the archive's largest value {magnitude:g} could take the "
                              f"aggregation's float64 sum past {_FLOAT64_MAX:.4g}; {fix}")

    def add(self, weighting: float, layers: Sequence[np.ndarray], *, magnitude: float | None = None) -> None:
        magnitude = largest_magnitude(layers) if magnitude is None else magnitude
        self.check(layers, weighting=weighting, magnitude=magnitude)
        buffer = self._buffer
        for running, layer in zip(self.sums, layers, strict=True):
            flat_sum, flat_layer = running.reshape(-1), layer.reshape(-1)
            # In chunks through one float64 buffer: no full-size temporary for a large layer.
            for start in range(0, flat_layer.size, _CHUNK):
                stop = min(start + _CHUNK, flat_layer.size)
                scaled = np.multiply(flat_layer[start:stop], weighting, dtype=np.float64, out=buffer[: stop - start])
                flat_sum[start:stop] += scaled
        self.total_weight += weighting
        self.bound += weighting * magnitude
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        if self.total_weight <= 0:
            raise ValueError("no contributions to average")
        # Divided straight into the layer's dtype: no float64 temporary the size of the model.
        return [
            np.divide(running, self.total_weight, out=np.empty(running.shape, dtype), casting="unsafe")
            for running, dtype in zip(self.sums, self.dtypes, strict=True)
        ]


def weighted_mean(contributions: Sequence[tuple[float, Sequence[np.ndarray]]]) -> list[np.ndarray]:
    accumulator = WeightedSum(contributions[0][1])
    for weighting, layers in contributions:
        accumulator.add(weighting, layers)
    return accumulator.mean()
