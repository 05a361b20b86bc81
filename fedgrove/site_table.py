"""A site's own table made ready to federate: labelled records, split into the site's training and test parts.

Why this module exists: every site holds out its own test records, and the split must be the same wherever
it is computed (at the site, in the in-memory simulation, in the one-machine centralised baseline), so it
is a pure, seeded function of the table, the spec and the site's name. The split is stratified by label:
each label's records are shuffled with the site's seed and `round(test_fraction * count)` of them go to
the test part (a label with a single record stays in training). A regression's strata are quantiles of the
target at the site: ten (deciles), or fewer at a small site, one per test record it should hold out, so
that every stratum holds out at least one record and the site about `test_fraction` of its records.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedgrove.spec import FederationSpec
from fedgrove.values import canonical_label, is_missing, label_sort_key


REGRESSION_STRATA = 10  # a regression's target is stratified by its deciles at the site, or fewer quantiles


def site_seed(seed: int, site: str) -> int:
    """A site's seed for its split and its shuffles: stable across processes and machines, distinct per site."""
    digest = hashlib.sha256(f"{seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class SiteTable:
    """One site's labelled records, split. `unlabelled` counts the records dropped for a missing label."""

    site: str
    train: pd.DataFrame
    test: pd.DataFrame
    unlabelled: int

    @property
    def records(self) -> int:
        return len(self.train) + len(self.test)


def stratified_test_positions(keys: list, *, test_fraction: float, seed: int) -> np.ndarray:
    """Positions (sorted) of the held-out records: per stratum, a seeded shuffle and the first round(f * n)."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for key in sorted(set(keys)):
        members = np.flatnonzero(np.fromiter((k == key for k in keys), dtype=bool, count=len(keys)))
        count = int(round(test_fraction * len(members))) if len(members) > 1 else 0
        held.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)


def regression_strata(records: int, test_fraction: float) -> int:
    """How many quantile strata a regression site's target is split into: ten, or one per record the site
    should hold out when that is fewer (deciles of 14 records hold 1 or 2 each, and round(0.2 * 2) is 0)."""
    return max(1, min(REGRESSION_STRATA, round(test_fraction * records)))


def prepare_site_table(
    frame: pd.DataFrame, *, site: str, target: str, test_fraction: float, seed: int, task: str = "binary"
) -> SiteTable:
    """Drop records without a label, then split the rest into training and test parts, seeded and stratified:
    by label, or for a regression by the target's quantiles at this site (`regression_strata`).

    The frame must hold the target column (the caller checks the schema first)."""
    labelled_mask = ~frame[target].map(is_missing).to_numpy(dtype=bool)
    labelled = frame.loc[labelled_mask].reset_index(drop=True)
    if task == "regression":
        numbers = pd.to_numeric(labelled[target], errors="coerce")
        strata = regression_strata(len(numbers), test_fraction)
        keys = list(np.floor((numbers.rank(method="first").fillna(0).to_numpy() - 1) / max(len(numbers), 1) * strata))
    else:
        keys = [label_sort_key(canonical_label(value)) for value in labelled[target]]
    held = stratified_test_positions(keys, test_fraction=test_fraction, seed=site_seed(seed, site))
    is_test = np.zeros(len(labelled), dtype=bool)
    is_test[held] = True
    return SiteTable(
        site=site,
        train=labelled.loc[~is_test].reset_index(drop=True),
        test=labelled.loc[is_test].reset_index(drop=True),
        unlabelled=int((~labelled_mask).sum()),
    )


def table_for_spec(frame: pd.DataFrame, spec: FederationSpec, site: str) -> SiteTable:
    """`prepare_site_table` with the spec's target, test fraction, seed and task."""
    return prepare_site_table(frame, site=site, target=spec.target, test_fraction=spec.evaluation.test_fraction,
                              seed=spec.train.seed, task=spec.task)
