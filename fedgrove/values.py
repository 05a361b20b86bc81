"""Canonical forms of the values sites must agree on: labels and categories.

Why this module exists: the same label or category reaches different sites through different readers.
A CSV with a missing cell makes pandas read a column of integers as floats (`1.0`), a SQL driver returns
`numpy.int64`, a Parquet file a plain `int`, and a column of yes/no may arrive as booleans. Sites compare
these values by their canonical form, so `1`, `1.0` and `numpy.int64(1)` are one label everywhere, and a
category is always a string (`"1"`, `"north"`, `"True"`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

Label = int | float | str | bool


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pandas' NA."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def canonical_label(value: Any) -> Label:
    """A JSON-safe form of one label: integer-valued numbers become ints, text stays text."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return int(number) if math.isfinite(number) and number.is_integer() else number
    return str(value)


def label_sort_key(label: Label) -> tuple[int, Any]:
    """Numbers before text; within each, natural order. Booleans sort as numbers (False < True)."""
    if isinstance(label, bool | int | float):
        return (0, float(label))
    return (1, label)


def sorted_labels(labels: Iterable[Label]) -> list[Label]:
    return sorted(set(labels), key=label_sort_key)


def canonical_category(value: Any) -> str:
    """One category as text: integer-valued numbers without a decimal point (`1.0` -> `"1"`)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if math.isfinite(number) and number.is_integer() else repr(number)
    return str(value)


def category_strings(column: pd.Series) -> pd.Series:
    """The column's present values as canonical category strings (missing values dropped, index kept)."""
    present = column[~column.isna()]
    if pd.api.types.is_bool_dtype(present.dtype):
        return present.map(lambda v: str(bool(v)))
    return present.map(canonical_category)
