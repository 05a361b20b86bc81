"""The centralised baseline: the same model on every site's training records together.

Only where one process holds all the data (`fedgrove train` and the demo, on one machine): it reads each
site's source here, splits it exactly as the site does, and applies the agreed preprocessing. In sites mode
no process may hold all the data, and the summary's `centralised` is null.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from fedgrove.encoding import Preprocessing
from fedgrove.metrics import RoundMetrics
from fedgrove.simulation import pooled_arrays
from fedgrove.site_table import table_for_spec
from fedgrove.site_training import site_arrays, train_alone
from fedgrove.sources import read_source
from fedgrove.spec import FederationSpec
from tasks.options import LOCAL


@task(name="train-centralised", **LOCAL)
def train_centralised(
    spec: FederationSpec, preprocessing: Preprocessing, *, sites: list[str], base_dir: Path | None = None
) -> list[RoundMetrics]:
    """Train on the listed sites' training records together; measure on their test records together."""
    arrays = []
    for site in sites:
        source = spec.sites[site]
        if source is None:
            raise ValueError(f"expected a data source for site {site} to train the centralised baseline, got none")
        table = table_for_spec(read_source(source, base_dir=base_dir, setting=f"the spec's sites.{site}"), spec, site)
        arrays.append(site_arrays(table, preprocessing))
    return train_alone(pooled_arrays(arrays), spec=spec, seed=spec.train.seed)
