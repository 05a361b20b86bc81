"""The tables the pipeline tests federate: data that ships inside installed packages, and one table the test
builds with string categories and missing values. Nothing is downloaded.

- `breast_cancer()`: scikit-learn's Wisconsin set (the demo), 569 records, 30 numeric columns, string labels.
- `anes96()`: statsmodels' 1996 US election survey, 944 records; `vote` 0/1, codes such as `PID` and `educ`.
- `affairs()`: statsmodels' `fair` survey (6,366 records) built into a hospital-style table: a string label
  (`affair`: yes/no), occupations as words, a region with two very rare values, missing ages and
  occupations, and a record id to exclude.
- `wine()` (multiclass: three cultivars) and `diabetes()` (regression), from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from fedgrove.demo import breast_cancer_table
from fedgrove.site_table import SiteTable, table_for_spec
from fedgrove.spec import FederationSpec
from fedgrove.split import split_table

OCCUPATIONS = {1: "student", 2: "farming", 3: "white-collar", 4: "teacher", 5: "manager", 6: "professional"}


def breast_cancer() -> pd.DataFrame:
    return breast_cancer_table()


def anes96() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.anes96.load_pandas().data.copy()


def affairs(seed: int = 1) -> pd.DataFrame:
    import statsmodels.api as sm

    frame = sm.datasets.fair.load_pandas().data.copy()
    frame["affair"] = np.where(frame.pop("affairs") > 0, "yes", "no")
    frame["occupation"] = frame["occupation"].map(OCCUPATIONS)
    rng = np.random.default_rng(seed)
    frame.loc[rng.random(len(frame)) < 0.05, "age"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.04, "occupation"] = None
    frame["region"] = rng.choice(["north", "south", "east", "west", "islands", "capital"],
                                 p=[0.3, 0.3, 0.2, 0.1994, 0.0003, 0.0003], size=len(frame))
    frame["patient_id"] = [f"P{i:05d}" for i in range(len(frame))]
    return frame


def site_tables(
    frame: pd.DataFrame, spec: FederationSpec, *, split: str = "iid", seed: int = 0
) -> dict[str, SiteTable]:
    """`frame` split over the spec's sites (in roster order), each prepared as its leaf prepares it."""
    roster = spec.roster()
    parts = split_table(frame, target=spec.target, sites=len(roster), split=split, seed=seed,  # type: ignore[arg-type]
                        min_records=spec.min_records)
    return {
        site: table_for_spec(part, spec, site)
        for site, part in zip(roster, parts.values(), strict=True)
    }


def spec_for(target: str, sites: int = 5, **keys: object) -> FederationSpec:
    return FederationSpec.model_validate({"target": target, "sites": [f"site-{i}" for i in range(1, sites + 1)],
                                          **keys})


def pooled_training(tables: Mapping[str, SiteTable]) -> pd.DataFrame:
    return pd.concat([t.train for t in tables.values()], ignore_index=True)


def wine() -> pd.DataFrame:
    """scikit-learn's wine set: 178 records, 13 numeric columns, three cultivars by name."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame["cultivar"] = frame.pop("target").map({0: "barolo", 1: "grignolino", 2: "barbera"})
    return frame


def diabetes() -> pd.DataFrame:
    """scikit-learn's diabetes set: 442 records, 10 numeric columns, disease progression after a year."""
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
