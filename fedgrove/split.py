"""Splitting one table into per-site files, to try a federation from a single file (`fedgrove split`).

Why this module exists: a data scientist with one table wants to see what federation would do before the
organisations are involved, and the demo needs sites of its own. `split_table` is a pure, seeded function:
`iid` = stratified folds by label; `dirichlet` = label skew, each label's records divided by
Dirichlet(`alpha`) proportions, redrawn (seeded) until every site has at least `min_records` records. A numeric
target with more than `QUANTILE_STRATA` distinct values (a regression's) is stratified, or skewed, by its
deciles. Each site later holds out its own test records, so nothing here is held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from fedgrove.values import canonical_label, is_missing, label_sort_key

Split = Literal["iid", "dirichlet"]
MAX_DIRICHLET_TRIES = 1000
QUANTILE_STRATA = 20  # a numeric target with more distinct values is stratified by its deciles


def site_names(sites: int) -> list[str]:
    """``site-1`` … ``site-N``."""
    return [f"site-{i}" for i in range(1, sites + 1)]


def split_table(
    frame: pd.DataFrame,
    *,
    target: str,
    sites: int,
    split: Split = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_records: int = 10,
) -> dict[str, pd.DataFrame]:
    """``{"site-1": frame, …}``: disjoint parts that together hold every record (the index is kept)."""
    if target not in frame.columns:
        raise ValueError(f"expected a target column {target!r}, got columns {list(frame.columns)[:12]} (fix: pass "
                         "--target with one of them)")
    if sites < 1:
        raise ValueError(f"expected sites >= 1, got {sites}")
    labels = strata(frame[target])
    if split == "iid":
        positions = _iid_positions(labels, sites=sites, seed=seed, min_records=min_records)
    elif split == "dirichlet":
        positions = _dirichlet_positions(labels, sites=sites, alpha=alpha, seed=seed, min_records=min_records)
    else:
        raise ValueError(f"expected split 'iid' or 'dirichlet', got {split!r}")
    return {name: frame.iloc[np.sort(pos)] for name, pos in zip(site_names(sites), positions, strict=True)}


def strata(target: pd.Series) -> np.ndarray:
    """Each record's stratum: its label, or its decile for a numeric target of many values (missing: its own)."""
    numeric = pd.api.types.is_numeric_dtype(target.dtype) and not pd.api.types.is_bool_dtype(target.dtype)
    if numeric and target.nunique() > QUANTILE_STRATA:
        ranks = target.rank(method="first").to_numpy()
        bins = np.floor((ranks - 1) / np.nanmax(ranks) * 10).astype(float)
        return np.unique(np.where(np.isnan(ranks), -1, bins), return_inverse=True)[1]
    keys = [(1, "") if is_missing(v) else label_sort_key(canonical_label(v)) for v in target]
    return np.unique(np.array([repr(k) for k in keys]), return_inverse=True)[1]


def _iid_positions(labels: np.ndarray, *, sites: int, seed: int, min_records: int) -> list[np.ndarray]:
    smallest_share = len(labels) // sites  # stratified folds differ in size by at most one record
    if smallest_share < min_records:
        raise ValueError(f"expected every site to get >= {min_records} records, but an iid split of {len(labels)} "
                         f"records over {sites} sites gives the smallest {smallest_share} (fix: use fewer sites, or "
                         "lower --min-records)")
    if sites == 1:
        return [np.arange(len(labels))]
    smallest = int(np.bincount(labels).min())
    if smallest < sites:
        raise ValueError(f"expected every label to have >= {sites} records for an iid split, got {smallest} (fix: "
                         "use fewer sites, or --split dirichlet)")
    folds = StratifiedKFold(n_splits=sites, shuffle=True, random_state=seed)
    return [held for _, held in folds.split(np.zeros(len(labels)), labels)]


def _dirichlet_positions(
    labels: np.ndarray, *, sites: int, alpha: float, seed: int, min_records: int
) -> list[np.ndarray]:
    if alpha <= 0:
        raise ValueError(f"expected alpha > 0, got {alpha}")
    if sites * min_records > len(labels):
        raise ValueError(f"expected at least sites * min_records = {sites * min_records} records, got {len(labels)} "
                         "(fix: lower --min-records or use fewer sites)")
    rng = np.random.default_rng(seed)
    best = 0
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(sites)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.append(chunk)
        positions = [np.concatenate(part) for part in parts]
        smallest = min(len(pos) for pos in positions)
        if smallest >= min_records:
            return positions
        best = max(best, smallest)
    raise ValueError(
        f"expected every site to get >= {min_records} records, but after {MAX_DIRICHLET_TRIES} Dirichlet(alpha="
        f"{alpha}) draws the smallest site had at most {best} (fix: raise --alpha, lower --min-records or use fewer "
        "sites)"
    )


def write_split(parts: dict[str, pd.DataFrame], directory: str | Path) -> dict[str, Path]:
    """Write ``<site>.csv`` per part into ``directory``; returns site -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        paths[name] = directory / f"{name}.csv"
        part.to_csv(paths[name], index=False)
    return paths
