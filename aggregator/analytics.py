"""Combines federated-analytics archives field by field (the `save_analytics` / `save_fields` payloads).

The bundle suffixes fix their own operation (`_n, _nan, _sum, _sumsq` summed, `_min` min, `_max` max);
any other field takes the operation configured for the branch. Like `WeightedSum`, the state is one
value per field whatever the number of leaves.

As the official client says of its own bundles, every site must send a field in the same dtype, so a
field whose dtype differs is refused, and the aggregate keeps that dtype. Sums run in 64 bits (float64,
int64, uint64) and a sum that would not fit the field's dtype is refused rather than wrapped or turned
into Inf; booleans are not summed (numpy's `+` of booleans is a logical or).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OPERATIONS = ("sum", "min", "max", "must_match")
_SUFFIX_OPERATIONS = {"_n": "sum", "_nan": "sum", "_sum": "sum", "_sumsq": "sum", "_min": "min", "_max": "max"}


class FieldMismatch(ValueError):
    """A field is missing, extra, shaped differently or disagrees where it must match."""


class FieldOverflow(ValueError):
    """Summing a field would pass what its dtype can hold."""


class UnconfiguredField(ValueError):
    """A field has no operation: neither a bundle suffix nor the branch's configuration names one."""


def operation_for(name: str, *, configured: Mapping[str, str], default: str | None) -> str:
    for suffix, operation in _SUFFIX_OPERATIONS.items():
        if name.endswith(suffix):
            return operation
    operation = configured.get(name, default)
    if operation is None:
        raise UnconfiguredField(
            f"field '{name}' has no combining operation; configure one of {', '.join(OPERATIONS)} for the branch"
        )
    return operation


class FieldCombiner:
    def __init__(
        self, template: Mapping[str, np.ndarray], *, configured: Mapping[str, str], default: str | None
    ) -> None:
        self.operations = {name: operation_for(name, configured=configured, default=default) for name in template}
        self.dtypes = {name: array.dtype for name, array in template.items()}
        self.shapes = {name: array.shape for name, array in template.items()}
        for name, operation in self.operations.items():
            if operation != "must_match" and self.dtypes[name].kind in "US":
                raise FieldMismatch(f"field '{name}' holds text; only must_match can combine it")
            if operation == "sum" and self.dtypes[name].kind == "b":
                raise FieldMismatch(f"field '{name}' holds booleans, which cannot be summed; send counts as "
                                    "integers, or combine it with min, max or must_match")
        self.values: dict[str, np.ndarray] = {}
        self.count = 0

    def check(self, fields: Mapping[str, np.ndarray]) -> None:
        """FieldMismatch or FieldOverflow if `fields` cannot be added; changes nothing."""
        self._combined(fields)

    def add(self, fields: Mapping[str, np.ndarray]) -> None:
        self.values = self._combined(fields)
        self.count += 1

    def _combined(self, fields: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every field's value once `fields` are added, computed without changing the running values."""
        if set(fields) != set(self.operations):
            missing = sorted(set(self.operations) - set(fields))
            extra = sorted(set(fields) - set(self.operations))
            raise FieldMismatch(f"fields differ from the open aggregation's: missing {missing}, unexpected {extra}")
        combined: dict[str, np.ndarray] = {}
        for name, array in fields.items():
            if array.shape != self.shapes[name] or array.dtype != self.dtypes[name]:
                raise FieldMismatch(
                    f"field '{name}' has shape {array.shape} and dtype {array.dtype}; "
                    f"the open aggregation expects shape {self.shapes[name]} and dtype {self.dtypes[name]}"
                )
            operation = self.operations[name]
            if name not in self.values:
                combined[name] = _widened(array)
            elif operation == "sum":
                combined[name] = self._sum(name, array)
            elif operation == "min":
                combined[name] = np.minimum(self.values[name], array)
            elif operation == "max":
                combined[name] = np.maximum(self.values[name], array)
            elif not np.array_equal(self.values[name], array):
                raise FieldMismatch(f"field '{name}' must match across leaves")
            else:
                combined[name] = self.values[name]
        return combined

    def _sum(self, name: str, array: np.ndarray) -> np.ndarray:
        """The running sum of `name` with `array` added, in 64 bits; FieldOverflow if it would not fit the
        field's dtype (or 64 bits)."""
        current, dtype = self.values[name], self.dtypes[name]
        addend = _widened(array)
        with np.errstate(over="ignore"):  # a float sum past its dtype becomes Inf here, and is refused below
            total = current + addend
            if dtype.kind == "f":
                fits = bool(np.isfinite(total.astype(dtype)).all())
            else:
                wrapped = (total < current) if dtype.kind == "u" else ((current ^ total) & (addend ^ total)) < 0
                limits = np.iinfo(dtype)
                fits = not wrapped.any() and bool(((total >= limits.min) & (total <= limits.max)).all())
        if not fits:
            raise FieldOverflow(f"field '{name}': the sum across leaves would not fit its dtype {dtype}; send it "
                                "in a wider dtype (save_analytics sends float64 sums and int64 counts)")
        return total

    def result(self) -> dict[str, np.ndarray]:
        """Every field in the dtype the leaves sent it in."""
        return {name: value.astype(self.dtypes[name], copy=False) for name, value in self.values.items()}


def _widened(array: np.ndarray) -> np.ndarray:
    """A copy of a numeric array in 64 bits of its kind (float64, int64 or uint64); others as they are."""
    wide = {"f": np.float64, "i": np.int64, "u": np.uint64}.get(array.dtype.kind)
    return array.astype(wide if wide is not None else array.dtype, copy=True)
