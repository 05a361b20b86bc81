"""Combines federated-analytics archives field by field (the `save_analytics` / `save_fields` payloads).

The bundle suffixes fix their own operation (`_n, _nan, _sum, _sumsq` summed, `_min` min, `_max` max);
any other field takes the operation configured for the branch. Like `WeightedSum`, the state is one
value per field whatever the number of leaves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

OPERATIONS = ("sum", "min", "max", "must_match")
_SUFFIX_OPERATIONS = {"_n": "sum", "_nan": "sum", "_sum": "sum", "_sumsq": "sum", "_min": "min", "_max": "max"}


class FieldMismatch(ValueError):
    """A field is missing, extra, shaped differently or disagrees where it must match."""


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
        self.values: dict[str, np.ndarray] = {}
        self.count = 0

    def check(self, fields: Mapping[str, np.ndarray]) -> None:
        if set(fields) != set(self.operations):
            missing = sorted(set(self.operations) - set(fields))
            extra = sorted(set(fields) - set(self.operations))
            raise FieldMismatch(f"fields differ from the open aggregation's: missing {missing}, unexpected {extra}")
        for name, array in fields.items():
            if array.shape != self.shapes[name] or array.dtype.kind != self.dtypes[name].kind:
                raise FieldMismatch(
                    f"field '{name}' has shape {array.shape} and dtype {array.dtype}; "
                    f"the open aggregation expects shape {self.shapes[name]} and dtype {self.dtypes[name]}"
                )
            if self.operations[name] == "must_match" and name in self.values:
                if not np.array_equal(self.values[name], array):
                    raise FieldMismatch(f"field '{name}' must match across leaves")

    def add(self, fields: Mapping[str, np.ndarray]) -> None:
        self.check(fields)
        for name, array in fields.items():
            operation = self.operations[name]
            wide = array.astype(np.float64) if array.dtype.kind == "f" else array
            if name not in self.values:
                self.values[name] = wide.copy()
            elif operation == "sum":
                self.values[name] = self.values[name] + wide
            elif operation == "min":
                self.values[name] = np.minimum(self.values[name], wide)
            elif operation == "max":
                self.values[name] = np.maximum(self.values[name], wide)
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        return {name: value.astype(self.dtypes[name], copy=False) for name, value in self.values.items()}
