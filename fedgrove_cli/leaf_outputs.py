"""What `fedgrove leaf` leaves behind at its site: the federated model, ready for `fedgrove predict`.

A leaf run alone (against a hosted BranchKey branch) has no coordinator to write the model; the site holds
the same final parameters as every other site, and its result carries the agreed preprocessing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fedgrove.artifacts import artifact_store_from_url
from fedgrove.model import build_model, outputs_for, set_parameters
from fedgrove.model_card import ModelCard, save_model
from fedgrove.results import final_test_metrics
from fedgrove.spec import FederationSpec
from tasks.site_results import read_site_result


def write_site_model(*, spec: FederationSpec, run_id: str, artifacts_url: str, site: str) -> dict[str, str]:
    """Write `model.pt` and `model.json` beside the site's result; returns their URIs."""
    result, parameters = read_site_result(run_id=run_id, artifacts_url=artifacts_url, site=site)
    preprocessing = result.preprocessing
    card = ModelCard(run_id=run_id, spec=spec.shared(), preprocessing=preprocessing,
                     n_inputs=len(preprocessing.input_names),
                     n_outputs=outputs_for(preprocessing.task, len(preprocessing.labels)),
                     metrics=final_test_metrics(result.federated[-1]))
    model = build_model(card.n_inputs, card.n_outputs, seed=spec.train.seed, spec=spec.model)
    set_parameters(model, parameters)
    with tempfile.TemporaryDirectory() as staging:
        weights, card_path = save_model(model, Path(staging) / "model.pt", card)
        store = artifact_store_from_url(artifacts_url)
        uris = store.publish_run(run_id, {"model.pt": weights, "model.json": card_path})
    return {"model": uris["model.pt"], "card": uris["model.json"]}
