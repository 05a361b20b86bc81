"""The built-in demo: the Wisconsin breast-cancer table split into site files, and the spec that federates it.

Why this module exists: `fedgrove demo` (and the weekly deployment when it is given no spec) shows the whole
tool on data that ships inside scikit-learn, so it needs no download: 569 records, 30 numeric features and a
`diagnosis` of `benign` or `malignant`, split over N sites; the sites pick the 4 most significant features
by a federated likelihood-ratio test and train a logistic regression.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from fedgrove.sources import DataSource
from fedgrove.spec import FederationSpec
from fedgrove.split import split_table, write_split

TARGET = "diagnosis"


class DemoOptions(BaseModel):
    """How the demo splits its table when the run is given no spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: int = Field(default=5, ge=1, le=50)
    split: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    rounds: int = Field(default=50, ge=1)
    seed: int = 0


def breast_cancer_table() -> pd.DataFrame:
    """The 569 records: 30 float feature columns and `diagnosis` (ships with scikit-learn)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame[TARGET] = np.where(frame.pop("target").to_numpy() == 1, "benign", "malignant")
    return frame


def write_demo_sites(directory: Path, options: DemoOptions, *, min_records: int) -> dict[str, Path]:
    """Split the table over `options.sites` sites into `directory/site-<i>.csv`."""
    parts = split_table(breast_cancer_table(), target=TARGET, sites=options.sites, split=options.split,
                        alpha=options.alpha, seed=options.seed, min_records=min_records)
    return write_split(parts, directory)


def demo_spec(paths: dict[str, Path] | None = None, options: DemoOptions = DemoOptions()) -> FederationSpec:
    """The demo's spec over its site files (or over site names alone, for sites mode)."""
    sites: dict[str, DataSource | None] = (
        {name: DataSource(data=str(path)) for name, path in paths.items()} if paths is not None
        else {f"site-{i}": None for i in range(1, options.sites + 1)}
    )
    return FederationSpec.model_validate({
        "task": "binary",
        "target": TARGET,
        "select": {"k": 4},
        "model": {"kind": "logistic"},
        "train": {"rounds": options.rounds, "learning_rate": 0.3, "batch_size": 32, "local_epochs": 1,
                  "seed": options.seed},
        "evaluation": {"test_fraction": 0.2},
        "sites": sites,
    })
