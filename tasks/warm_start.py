"""The warm start's two steps as tasks: the coordinator picks the registered run, each site loads its model.

Why this module exists: which model `train.init_from` means is settled once, by the coordinator, from the model
registry, so that every site starts from the same run even if `production` moves meanwhile; each site then reads
that run's model from the artifact store and checks it against the preprocessing it agreed (fedgrove.warm_start).
"""

from __future__ import annotations

import numpy as np
from prefect import task

from fedgrove.artifacts import artifact_store_from_url
from fedgrove.encoding import Preprocessing
from fedgrove.model_card import ModelCard
from fedgrove.registry import Registry
from fedgrove.registry_store import index_store_from_url
from fedgrove.spec import FederationSpec
from fedgrove.warm_start import registered_run, warm_start_parameters
from tasks.options import LOCAL


@task(name="choose-warm-start", **LOCAL)
def choose_warm_start(spec: FederationSpec, *, artifacts_url: str | None) -> str | None:
    """The run id whose model starts this run, or None to start fresh."""
    init_from = spec.train.init_from
    if init_from == "none":
        return None
    registry = Registry(index_store_from_url(artifacts_url))
    return registered_run(registry.index(), init_from, location=registry.location)


@task(name="load-warm-start", **LOCAL)
def load_warm_start(run_id: str, *, artifacts_url: str | None, spec: FederationSpec, preprocessing: Preprocessing,
                    n_outputs: int) -> list[np.ndarray]:
    store = artifact_store_from_url(artifacts_url)
    card = ModelCard.model_validate_json(store.read_bytes(run_id, "model.json"))
    return warm_start_parameters(card, store.read_bytes(run_id, "model.pt"), run_id=run_id, spec=spec,
                                 preprocessing=preprocessing, n_outputs=n_outputs)
