"""Tasks that hand a site's result to the coordinator through the artifact store.

In sites mode a leaf runs on its organisation's own worker; it publishes its result (metrics, counts, the
agreed preprocessing: no record) and its final parameters into the run's folder of the artifact store that
its own `FEDGROVE_ARTIFACTS` names, and the coordinator reads them back from its own. The two must point
at the same store (a bucket the consortium shares); if they do not, the coordinator says so. The site the
coordinator asks to keep every round's aggregate (they are the same at every site) publishes them too, so that
the coordinator can keep the best round's model once it has pooled every site's test loss.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from prefect import task

from fedgrove.artifacts import ArtifactNotFound, artifact_store_from_url
from fedgrove.results import SiteResult
from fedgrove_common.protocol import layer_entries, layer_name
from tasks.options import TRANSIENT


class SiteResultMissing(RuntimeError):
    """A site's run completed but its result is not in the coordinator's artifact store."""


def site_result_names(site: str) -> tuple[str, str]:
    return f"site-{site}.json", f"site-{site}-parameters.npz"


def round_models_name(site: str) -> str:
    return f"site-{site}-round-models.npz"


def _round_entry(round_number: int, layer: int) -> str:
    return f"round-{round_number:06d}-{layer_name(layer)}"


@task(name="publish-site-result", **TRANSIENT)
def publish_site_result(
    *, run_id: str, artifacts_url: str | None, result: SiteResult, parameters: list[np.ndarray], staging: Path
) -> dict[str, str]:
    """Put the site's result and final parameters in the run's folder of the artifact store, both or none."""
    summary_name, parameters_name = site_result_names(result.site)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / summary_name).write_text(result.model_dump_json(indent=2) + "\n")
    np.savez(staging / parameters_name, **layer_entries(parameters))
    return artifact_store_from_url(artifacts_url).publish_run(run_id, {summary_name: staging / summary_name,
                                                                       parameters_name: staging / parameters_name})


@task(name="publish-round-models", **TRANSIENT)
def publish_round_models(*, run_id: str, artifacts_url: str | None, site: str,
                         round_models: dict[int, list[np.ndarray]], staging: Path) -> str:
    """Every round's aggregate this site kept, as one archive in the run's folder, for the best round's model.
    Published after the site's result, and apart from it: the result never waits on it or fails with it."""
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / round_models_name(site)
    np.savez(path, **{_round_entry(number, i): layer
                      for number, layers in round_models.items() for i, layer in enumerate(layers)})
    return artifact_store_from_url(artifacts_url).publish_run(run_id, {path.name: path})[path.name]


def read_round_model(*, run_id: str, artifacts_url: str | None, site: str, round_number: int
                     ) -> list[np.ndarray] | None:
    """The aggregate of `round_number` as `site` kept it, or None if it kept none (or not that round).
    A store or archive that cannot be read raises (the caller decides what the best model is worth)."""
    try:
        raw = artifact_store_from_url(artifacts_url).read_bytes(run_id, round_models_name(site))
    except ArtifactNotFound:
        return None
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        layers, entry = [], _round_entry(round_number, 0)
        while entry in archive.files:
            layers.append(archive[entry])
            entry = _round_entry(round_number, len(layers))
    return layers or None


def read_site_result(*, run_id: str, artifacts_url: str | None, site: str) -> tuple[SiteResult, list[np.ndarray]]:
    """A site's published result and parameters, as the coordinator's artifact store holds them."""
    summary_name, parameters_name = site_result_names(site)
    store = artifact_store_from_url(artifacts_url)
    try:
        summary = store.read_bytes(run_id, summary_name)
        raw = store.read_bytes(run_id, parameters_name)
    except ArtifactNotFound:
        raise SiteResultMissing(
            f"site {site} finished, but its result is not in this coordinator's artifact store, run {run_id} "
            "(fix: set the site worker's FEDGROVE_ARTIFACTS to the store the coordinator uses, e.g. the "
            "consortium's shared s3:// bucket)"
        ) from None
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        parameters = [archive[layer_name(i)] for i in range(len(archive.files))]
    return SiteResult.model_validate_json(summary), parameters
