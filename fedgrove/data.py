"""The demo's data: the Wisconsin breast-cancer set, a held-out test set and one partition per organisation.

Why this module exists: every leaf (organisation) must read only its own records, and every experiment
(federated, each organisation alone, centralised) must see the same split. Splitting is a pure, seeded
function of the frame; writing one CSV per organisation is the only I/O.

Target encoding is scikit-learn's: ``0`` = malignant, ``1`` = benign.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import StratifiedKFold, train_test_split

TARGET_COLUMN = "target"
TEST_FILE = "test.csv"
MAX_DIRICHLET_TRIES = 1000

Split = Literal["iid", "dirichlet"]


def load_dataset() -> pd.DataFrame:
    """The 569 records: 30 float feature columns plus an integer ``target`` column (ships with sklearn)."""
    frame = load_breast_cancer(as_frame=True).frame
    frame[TARGET_COLUMN] = frame[TARGET_COLUMN].astype(np.int64)
    return frame


def feature_columns() -> list[str]:
    """The 30 feature names, in the data set's order."""
    return [str(name) for name in load_breast_cancer().feature_names]


def organisation_names(organisations: int) -> list[str]:
    """``org-1`` … ``org-N``."""
    return [f"org-{i}" for i in range(1, organisations + 1)]


def split_dataset(
    frame: pd.DataFrame,
    *,
    organisations: int,
    split: Split = "iid",
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
    min_records: int = 10,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Return ``(test, {"org-1": frame, …})``; the frames keep ``frame``'s index, so they can be checked.

    The test set is a stratified, seeded ``test_fraction`` of ``frame``. The rest is split into
    ``organisations`` disjoint partitions that together cover it: ``iid`` = stratified folds; ``dirichlet``
    = label skew, each class's records divided by Dirichlet(``alpha``) proportions, redrawn (seeded) until
    every organisation has at least ``min_records`` records. An iid split too thin for ``min_records`` raises.
    """
    if TARGET_COLUMN not in frame.columns:
        raise ValueError(f"expected a {TARGET_COLUMN!r} column, got columns {list(frame.columns)} "
                         "(fix: use load_dataset())")
    if organisations < 1:
        raise ValueError(f"expected organisations >= 1, got {organisations}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"expected 0 < test_fraction < 1, got {test_fraction}")
    train, test = train_test_split(
        frame, test_size=test_fraction, stratify=frame[TARGET_COLUMN], random_state=seed
    )
    labels = train[TARGET_COLUMN].to_numpy()
    if split == "iid":
        positions = _iid_positions(labels, organisations=organisations, seed=seed, min_records=min_records)
    elif split == "dirichlet":
        positions = _dirichlet_positions(
            labels, organisations=organisations, alpha=alpha, seed=seed, min_records=min_records
        )
    else:
        raise ValueError(f"expected split 'iid' or 'dirichlet', got {split!r}")
    names = organisation_names(organisations)
    partitions = {name: train.iloc[np.sort(pos)] for name, pos in zip(names, positions, strict=True)}
    return test, partitions


def _iid_positions(labels: np.ndarray, *, organisations: int, seed: int, min_records: int) -> list[np.ndarray]:
    smallest_share = len(labels) // organisations  # stratified folds differ in size by at most one record
    if smallest_share < min_records:
        raise ValueError(f"expected every organisation to get >= {min_records} records, but an iid split of "
                         f"{len(labels)} training records over {organisations} organisations gives the smallest "
                         f"{smallest_share} (fix: use fewer organisations, or lower min_records)")
    if organisations == 1:
        return [np.arange(len(labels))]
    smallest = int(np.bincount(labels).min())
    if smallest < organisations:
        raise ValueError(f"expected every class to have >= {organisations} training records for an iid "
                         f"split, got {smallest} (fix: use fewer organisations)")
    folds = StratifiedKFold(n_splits=organisations, shuffle=True, random_state=seed)
    return [held for _, held in folds.split(np.zeros(len(labels)), labels)]


def _dirichlet_positions(
    labels: np.ndarray, *, organisations: int, alpha: float, seed: int, min_records: int
) -> list[np.ndarray]:
    if alpha <= 0:
        raise ValueError(f"expected alpha > 0, got {alpha}")
    if organisations * min_records > len(labels):
        raise ValueError(
            f"expected at least organisations * min_records = {organisations * min_records} training "
            f"records, got {len(labels)} (fix: lower min_records or organisations)"
        )
    rng = np.random.default_rng(seed)
    best = 0
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(organisations)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(organisations, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.append(chunk)
        positions = [np.concatenate(part) for part in parts]
        smallest = min(len(pos) for pos in positions)
        if smallest >= min_records:
            return positions
        best = max(best, smallest)
    raise ValueError(
        f"expected every organisation to get >= {min_records} records, but after {MAX_DIRICHLET_TRIES} "
        f"Dirichlet(alpha={alpha}) draws the smallest organisation had at most {best} "
        "(fix: raise alpha, lower min_records or use fewer organisations)"
    )


def write_partitions(
    test: pd.DataFrame, partitions: dict[str, pd.DataFrame], directory: str | Path
) -> dict[str, Path]:
    """Write ``test.csv`` and ``<org>.csv`` into ``directory``; return ``{"test": path, org: path, …}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if "test" in partitions:
        raise ValueError("expected organisation names other than 'test', got 'test' (fix: rename it)")
    paths = {"test": directory / TEST_FILE}
    test.to_csv(paths["test"], index=False)
    for name, part in partitions.items():
        paths[name] = directory / f"{name}.csv"
        part.to_csv(paths[name], index=False)
    return paths


def read_partition(path: str | Path, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read one partition CSV; ``columns`` (default: the 30 features and ``target``) must all be present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected a partition CSV at {path}, found none (fix: run the split first)")
    frame = pd.read_csv(path)
    required = list(columns) if columns is not None else [*feature_columns(), TARGET_COLUMN]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: expected columns {missing} are missing, got columns {list(frame.columns)} "
                         "(fix: write it with write_partitions())")
    if TARGET_COLUMN in frame.columns:
        frame[TARGET_COLUMN] = frame[TARGET_COLUMN].astype(np.int64)
    return frame
