"""Schema agreement: from each site's description of its own table, the columns, kinds and labels all use.

Why this module exists: a federation only works when every site encodes the same columns the same way,
yet no site may see another's records. Each site describes its table in counts (which columns it has, how
many cells hold numbers, text or nothing, which labels occur) and every site receives every description
(`fedgrove.documents`). `agree_schema` is a pure function of those descriptions and the spec, so every site
reaches the same decision, or the same error, at once: a site that lacks a column or holds text where the
others hold numbers stops the whole federation before round 1, and the message names the site, the column
and the fix. Descriptions hold column names, counts and label values, never a record.

Rules, for a feature column not listed under `categorical`:
- numbers at every site (text nowhere) -> numeric;
- text at every site, and `categorical` left to its default -> categorical;
- numbers and text mixed: the majority decides; a numeric column's text cells are an error at each site
  that holds them (fix: clean them, or list the column under `categorical`);
- no value at any site -> an error (fix: exclude it).
A column listed under `categorical` is categorical whatever it holds; its numbers become text (`1.0` -> "1").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from fedgrove.site_table import SiteTable
from fedgrove.spec import FederationSpec
from fedgrove.values import Label, canonical_label, sorted_labels

Kind = Literal["numeric", "categorical"]
MAX_LISTED = 8  # problems shown in one error; the rest are counted


class ColumnCounts(BaseModel):
    """How one column's cells read at one site: as numbers, as text, or missing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    numbers: int
    texts: int
    missing: int


class SiteProfile(BaseModel):
    """What a site tells the others about its table before anything is computed from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    spec_fingerprint: str
    error: str | None = None  # the site cannot take part; a public message (no path, URL or value)
    columns: dict[str, ColumnCounts] = {}  # in the table's order
    target: ColumnCounts | None = None  # how the target's cells read
    labels: list[Label] = []  # classification only: a regression target's values are records' values
    train_records: int = 0
    test_records: int = 0
    unlabelled: int = 0


class AgreedSchema(BaseModel):
    """The columns every site encodes, in order, with their kind, and the sorted labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    labels: list[Label]
    columns: list[str]
    kinds: dict[str, Kind]

    def of_kind(self, kind: Kind) -> list[str]:
        return [name for name in self.columns if self.kinds[name] == kind]


class FederationRefused(ValueError):
    """The sites' tables cannot be federated as the spec says; every site raises the same message."""


def count_cells(column: pd.Series) -> ColumnCounts:
    """Numbers, text and missing cells of one column. Booleans count as text (they are categories)."""
    missing = int(column.isna().sum())
    present = len(column) - missing
    if pd.api.types.is_bool_dtype(column.dtype):
        return ColumnCounts(numbers=0, texts=present, missing=missing)
    if pd.api.types.is_numeric_dtype(column.dtype):
        return ColumnCounts(numbers=present, texts=0, missing=missing)
    values = column[~column.isna()]
    as_numbers = pd.to_numeric(values.map(_number_or_text), errors="coerce")
    numbers = int(as_numbers.notna().sum())
    return ColumnCounts(numbers=numbers, texts=present - numbers, missing=missing)


def _number_or_text(value: object) -> object:
    """Booleans inside a text column are text, not 0/1."""
    return str(value) if isinstance(value, bool) else value


def profile_site(table: SiteTable, *, spec: FederationSpec) -> SiteProfile:
    """The site's profile over all its labelled records (training and test parts)."""
    frame = pd.concat([table.train, table.test], ignore_index=True)
    return SiteProfile(
        site=table.site,
        spec_fingerprint=spec.fingerprint(),
        columns={str(name): count_cells(frame[name]) for name in frame.columns if name != spec.target},
        target=count_cells(frame[spec.target]),
        labels=sorted_labels(canonical_label(value) for value in frame[spec.target]) if spec.classification else [],
        train_records=len(table.train),
        test_records=len(table.test),
        unlabelled=table.unlabelled,
    )


def refusal_profile(*, site: str, spec: FederationSpec, error: str) -> SiteProfile:
    """The profile of a site that cannot take part: it still reports, so the others stop at once."""
    return SiteProfile(site=site, spec_fingerprint=spec.fingerprint(), error=error)


def _refuse(problems: list[str]) -> FederationRefused:
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    text = "; ".join(shown) + (f"; and {more} more" if more else "")
    return FederationRefused(f"the sites cannot federate: {text}")


def agree_schema(spec: FederationSpec, profiles: Sequence[SiteProfile]) -> AgreedSchema:
    """The schema every site uses, or `FederationRefused` naming each site, column and fix."""
    problems = [f"site {p.site}: {p.error}" for p in profiles if p.error is not None]
    if problems:
        raise _refuse(problems)
    fingerprints = {p.spec_fingerprint for p in profiles}
    if len(fingerprints) > 1:
        raise _refuse([f"site {p.site} runs spec {p.spec_fingerprint}" for p in profiles]
                      + ["(fix: give every site the same spec file)"])
    for p in profiles:
        records = p.train_records + p.test_records
        if records < spec.min_records:
            problems.append(f"site {p.site} has {records} labelled records, fewer than min_records {spec.min_records} "
                            "(fix: leave the site out, or lower min_records for every site)")
    if problems:
        raise _refuse(problems)
    columns = _feature_columns(spec, profiles, problems)
    kinds = _kinds(spec, columns, profiles, problems)
    labels = _labels(spec, profiles, problems)
    if problems:
        raise _refuse(problems)
    return AgreedSchema(target=spec.target, labels=labels, columns=columns, kinds=kinds)


def _feature_columns(spec: FederationSpec, profiles: Sequence[SiteProfile], problems: list[str]) -> list[str]:
    excluded = {spec.target, *spec.exclude}
    if isinstance(spec.features, list):
        wanted = list(spec.features)
    else:
        wanted = []
        for p in profiles:
            wanted += [name for name in p.columns if name not in excluded and name not in wanted]
    holders = {name: [p.site for p in profiles if name in p.columns] for name in wanted}
    for p in profiles:
        for name in wanted:
            if name in p.columns:
                continue
            others = [site for site in holders[name] if site != p.site]
            if isinstance(spec.features, list):
                problems.append(f"site {p.site} lacks feature column {name!r} (fix: add it at {p.site}, or remove it "
                                "from features)")
            else:
                problems.append(f"site {p.site} lacks column {name!r} that {_sites(others)} {_has(others)} (fix: add "
                                f"it at {p.site}, or list {name!r} under exclude)")
    for name in spec.categorical or []:
        if name not in holders and name not in excluded and not any(name in p.columns for p in profiles):
            problems.append(f"categorical column {name!r} is in no site's table (fix: correct the name, or remove it "
                            "from categorical)")
    return wanted


def _kinds(
    spec: FederationSpec, columns: list[str], profiles: Sequence[SiteProfile], problems: list[str]
) -> dict[str, Kind]:
    kinds: dict[str, Kind] = {}
    declared = set(spec.categorical or [])
    for name in columns:
        counts = {p.site: p.columns[name] for p in profiles if name in p.columns}
        numbers = sum(c.numbers for c in counts.values())
        texts = sum(c.texts for c in counts.values())
        if numbers + texts == 0:
            problems.append(f"column {name!r} is empty at every site (fix: list it under exclude)")
        elif name in declared:
            kinds[name] = "categorical"
        elif texts == 0:
            kinds[name] = "numeric"
        elif numbers < texts:
            if spec.categorical is not None:
                problems.append(f"column {name!r} holds text but is not listed under categorical (fix: add it to "
                                "categorical, or list it under exclude)")
            kinds[name] = "categorical"
        else:
            kinds[name] = "numeric"
            for site, c in counts.items():
                if c.texts:
                    problems.append(f"site {site}: column {name!r} holds text in {c.texts} record"
                                    f"{'s' if c.texts != 1 else ''} where the sites hold numbers (fix: clean those "
                                    f"values at {site}, or list {name!r} under categorical)")
    return kinds


def _labels(spec: FederationSpec, profiles: Sequence[SiteProfile], problems: list[str]) -> list[Label]:
    if spec.task == "regression":
        _numeric_target(spec, profiles, problems)
        return []
    labels = sorted_labels(label for p in profiles for label in p.labels)
    shown = ", ".join(repr(label) for label in labels[:MAX_LISTED]) + (", ..." if len(labels) > MAX_LISTED else "")
    counted = f"target {spec.target!r} has {len(labels)} distinct label{'s' if len(labels) != 1 else ''} across " \
              f"the sites ({shown})"
    if spec.task == "binary" and len(labels) != 2:
        problems.append(f"{counted}; task binary needs exactly 2 (fix: choose another target, or map its values to "
                        "two labels at every site)")
    if spec.task == "multiclass" and len(labels) < 2:
        problems.append(f"{counted}; task multiclass needs at least 2 (fix: choose another target)")
    return labels


def _numeric_target(spec: FederationSpec, profiles: Sequence[SiteProfile], problems: list[str]) -> None:
    for p in profiles:
        if p.target is not None and p.target.texts:
            problems.append(f"site {p.site}: target {spec.target!r} holds text in {p.target.texts} record"
                            f"{'s' if p.target.texts != 1 else ''}; task regression needs numbers (fix: clean those "
                            "values, or choose task binary or multiclass)")
        if p.unlabelled:
            problems.append(f"site {p.site}: target {spec.target!r} is empty in {p.unlabelled} record"
                            f"{'s' if p.unlabelled != 1 else ''}; task regression needs a number in every record "
                            "(fix: fill those values, or drop the records)")


def _sites(names: Sequence[str]) -> str:
    if not names:
        return "no other site"
    return ("site " if len(names) == 1 else "sites ") + ", ".join(names)


def _has(names: Sequence[str]) -> str:
    return "has" if len(names) <= 1 else "have"
