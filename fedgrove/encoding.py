"""The agreed preprocessing as data: how any site, or `fedgrove predict`, turns a table into model inputs.

Why this module exists: every site must turn its records into exactly the same input columns, and a saved
model must score new records exactly as it was trained. So the outcome of federated preprocessing is one
JSON-serialisable object, carried by every leaf's result and by `model.json`:

- numeric columns: missing cells imputed with the pooled mean, then standardised with the pooled mean and
  standard deviation (population, over the imputed column);
- categorical columns: one-hot over the agreed levels (sorted), plus `<other>` for categories rarer than
  `min_category_count` over all sites or unseen in training, plus `<missing>` for empty cells; each
  indicator is standardised too, with its pooled share p (mean p, standard deviation sqrt(p(1-p)));
- an encoded column that is constant over all sites' training records carries no information and is left out;
- optionally, only the `k` selected encoded columns feed the model (`selected`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator

from fedgrove.values import Label, canonical_label, category_strings, label_sort_key

OTHER = "<other>"
MISSING = "<missing>"


class EncodedColumn(BaseModel):
    """One model input: a numeric column, or one level of a categorical column, with its standardisation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # "age", or "smoker=yes"
    column: str
    level: str | None = None  # None for a numeric column
    mean: float
    std: float


class CategoricalLevels(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    levels: list[str]  # kept categories, sorted; OTHER / MISSING are separate flags
    other: bool  # rare or unseen categories have a column of their own
    missing: bool  # empty cells have a column of their own


class Preprocessing(BaseModel):
    """Everything needed to turn a table into the model's inputs and labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = "binary"
    target: str
    labels: list[Label]  # classification: the sorted labels; regression: none
    target_mean: float | None = None  # regression: the pooled target's mean and standard deviation
    target_std: float | None = None
    numeric: dict[str, float]  # column -> pooled mean (the imputation value)
    categorical: list[CategoricalLevels]
    encoded: list[EncodedColumn]  # every non-constant encoded column, in order
    dropped_constant: list[str] = []
    selected: list[str] | None = None  # names of the encoded columns the model reads; None: all
    p_values: list[float] | None = None  # of `selected`, in order
    training_records: int
    method: str = "federated"

    @model_validator(mode="after")
    def _consistent(self) -> Preprocessing:
        names = [c.name for c in self.encoded]
        if self.selected is not None:
            unknown = [n for n in self.selected if n not in names]
            if unknown or not self.selected:
                raise ValueError(f"expected selected columns among the encoded ones, got unknown {unknown}")
            if self.p_values is not None and len(self.p_values) != len(self.selected):
                raise ValueError(f"expected one p-value per selected column, got {len(self.p_values)} for "
                                 f"{len(self.selected)}")
        if any(not np.isfinite(c.std) or c.std <= 0 for c in self.encoded):
            raise ValueError("expected every encoded column's standard deviation to be finite and > 0")
        return self

    @property
    def inputs(self) -> list[EncodedColumn]:
        """The encoded columns the model reads, in its input order."""
        if self.selected is None:
            return list(self.encoded)
        by_name = {c.name: c for c in self.encoded}
        return [by_name[name] for name in self.selected]

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.inputs]

    def with_selection(self, selected: list[str], p_values: list[float]) -> Preprocessing:
        return self.model_copy(update={"selected": selected, "p_values": p_values})

    def prepare(self, frame: pd.DataFrame, *, all_encoded: bool = False) -> PreparedColumns:
        """The source columns of the model's inputs (of every encoded column with `all_encoded`), read once."""
        columns = self.encoded if all_encoded else self.inputs
        missing = [name for name in dict.fromkeys(c.column for c in columns) if name not in frame.columns]
        if missing:
            raise MissingColumns(missing)
        return PreparedColumns(self, frame, columns)

    def transform(
        self, frame: pd.DataFrame, *, all_encoded: bool = False, dtype: type = np.float32
    ) -> tuple[np.ndarray, TransformReport]:
        """The model's inputs (shape (records, inputs); every encoded column with `all_encoded`) and what had
        to be filled in."""
        prepared = self.prepare(frame, all_encoded=all_encoded)
        return prepared.block(0, prepared.count, dtype=dtype), prepared.report

    def targets(self, series: pd.Series) -> np.ndarray:
        """What the model learns (float32): a label's index in `labels`, or the standardised target value."""
        if self.task != "regression":
            return self.label_index(series)
        assert self.target_mean is not None and self.target_std is not None
        return ((numeric_values(series, self.target) - self.target_mean) / self.target_std).astype(np.float32)

    def label_index(self, series: pd.Series) -> np.ndarray:
        """Each label's index in `labels` (float32: 0.0 / 1.0 for a binary task). Unknown labels raise."""
        position = {label_sort_key(label): index for index, label in enumerate(self.labels)}
        indices = []
        for row, value in zip(series.index, series, strict=True):
            key = label_sort_key(canonical_label(value))
            if key not in position:
                raise ValueError(f"row {row}: label {canonical_label(value)!r} in column {self.target!r} is not one of "
                                 f"the agreed labels {self.labels}")
            indices.append(position[key])
        return np.asarray(indices, dtype=np.float32)


class PreparedColumns:
    """A table's source columns read once: numeric ones as float64 with the imputed cells filled in, categorical
    ones as level codes. Standardised encoded columns are then cheap to build, a block at a time, which keeps
    the federated Newton fit's memory to a block of columns instead of every encoded column at once."""

    def __init__(self, preprocessing: Preprocessing, frame: pd.DataFrame, columns: list[EncodedColumn]) -> None:
        self.columns = columns
        self.report = TransformReport()
        self.records = len(frame)
        self._numbers: dict[str, np.ndarray] = {}
        self._codes: dict[str, tuple[np.ndarray, dict[str, int]]] = {}
        levels = {c.column: c for c in preprocessing.categorical}
        for name in dict.fromkeys(c.column for c in columns):
            if name in preprocessing.numeric:
                numbers = numeric_values(frame[name], name)
                holes = np.isnan(numbers)
                if holes.any():
                    self.report.imputed[name] = int(holes.sum())
                    numbers = np.where(holes, preprocessing.numeric[name], numbers)
                self._numbers[name] = numbers
            else:
                self._codes[name] = _level_codes(frame[name], levels[name], self.report)

    @property
    def count(self) -> int:
        return len(self.columns)

    def block(self, start: int, stop: int, *, dtype: type = np.float64) -> np.ndarray:
        """Standardised encoded columns `start` to `stop` (exclusive), shape (records, stop - start)."""
        chosen = self.columns[start:stop]
        values = np.empty((self.records, len(chosen)), dtype=dtype)
        for j, encoded in enumerate(chosen):
            if encoded.level is None:
                raw = self._numbers[encoded.column]
            else:
                codes, index = self._codes[encoded.column]
                raw = (codes == index[encoded.level]).astype(np.float64)
            values[:, j] = (raw - encoded.mean) / encoded.std
        return values


@dataclass
class TransformReport:
    """Cells filled in while transforming: imputed numbers and categories counted as other, by column."""

    imputed: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)


class MissingColumns(KeyError):
    """The table lacks columns the preprocessing needs."""

    def __init__(self, columns: list[str]) -> None:
        super().__init__(columns)
        self.columns = columns

    def __str__(self) -> str:
        return (f"expected column{'s' if len(self.columns) > 1 else ''} {', '.join(repr(c) for c in self.columns)} "
                "in the table, missing (fix: add them; the model reads them)")


class NonNumericCell(ValueError):
    """A numeric column holds text."""


def numeric_values(column: pd.Series, name: str) -> np.ndarray:
    """The column as float64 with NaN for missing cells; text raises `NonNumericCell` naming row and column."""
    if pd.api.types.is_bool_dtype(column.dtype) or not pd.api.types.is_numeric_dtype(column.dtype):
        converted = pd.to_numeric(column.map(lambda v: str(v) if isinstance(v, bool) else v), errors="coerce")
        bad = converted.isna() & column.notna()
        if bad.any():
            row = bad.idxmax()
            raise NonNumericCell(f"row {row}, column {name!r}: expected a number, got text (fix: correct the cell, or "
                                 "leave it empty to impute it)")
        column = converted
    return column.to_numpy(dtype=np.float64, na_value=np.nan)


def _level_codes(
    column: pd.Series, levels: CategoricalLevels, report: TransformReport
) -> tuple[np.ndarray, dict[str, int]]:
    """Each cell's level as a small integer (a kept category, OTHER or MISSING), and the code of each level."""
    index = {level: code for code, level in enumerate([*levels.levels, OTHER, MISSING])}
    codes = np.full(len(column), index[MISSING], dtype=np.int32)
    strings = category_strings(column.reset_index(drop=True))
    mapped = strings.map(index).fillna(index[OTHER]).astype(np.int32)
    codes[mapped.index.to_numpy()] = mapped.to_numpy()
    others = int((mapped == index[OTHER]).sum())
    if others:
        report.other[levels.column] = others
    return codes, index
