"""Tasks that write a run's outputs to the artifact store and describe the run in the Prefect UI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact, create_table_artifact

from fedgrove.artifacts import artifact_store_from_url
from fedgrove.model import build_model, set_parameters
from fedgrove.model_card import ModelCard, save_model
from fedgrove.registry_entry import BEST_MODEL_FILE
from fedgrove.run_report import run_markdown
from tasks.options import LOCAL, TRANSIENT

OUTPUT_FILES = ("model.pt", "model.json", "result.png", "epochs.csv", "summary.json")
BEST_MODEL_FILES = (BEST_MODEL_FILE, BEST_MODEL_FILE.replace(".pt", ".json"))
ARTIFACT_KEY = "federated-training"


@task(name="write-outputs", **TRANSIENT)
def write_outputs(
    *,
    run_id: str,
    staging: Path,
    artifacts_url: str | None,
    epochs: pd.DataFrame,
    card: ModelCard,
    parameters: list[np.ndarray],
    summary: dict,
    best: tuple[list[np.ndarray], dict[str, float | None]] | None = None,
) -> tuple[dict[str, str], str]:
    """Stage model, plot, per-epoch metrics and summary, then publish them all (or none) to the store.
    `best`: an earlier round's parameters and pooled test metrics, kept as best-model.pt/.json.

    Returns each output's URI and a URL to `result.png`."""
    staging.mkdir(parents=True, exist_ok=True)
    model = build_model(card.n_inputs, card.n_outputs, seed=card.spec.train.seed, spec=card.spec.model)
    set_parameters(model, parameters)
    save_model(model, staging / "model.pt", card)
    names = OUTPUT_FILES
    if best is not None:
        set_parameters(model, best[0])
        save_model(model, staging / BEST_MODEL_FILE, card.model_copy(update={"metrics": best[1]}))
        names += BEST_MODEL_FILES
    epochs.to_csv(staging / "epochs.csv", index=False)
    from fedgrove.plotting import plot_results  # matplotlib (~25 MB, ~0.5 s) only once training is over
    plot_results(epochs, staging / "result.png", headline=summary["headline"][0])
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    store = artifact_store_from_url(artifacts_url)
    uris = store.publish_run(run_id, {name: staging / name for name in names})
    return uris, store.url(run_id, "result.png")


@task(name="publish-prefect-artifacts", **LOCAL)
def publish_prefect_artifacts(*, summary: dict, epochs: pd.DataFrame, uris: dict[str, str], result_url: str) -> None:
    """The per-round table (every site and the pooled federation), the summary, a link to result.png."""
    federated = epochs[epochs["mode"].isin(["federated", "federated_pooled"])].round(4)
    create_table_artifact(
        table=json.loads(federated.to_json(orient="records")),
        key=f"{ARTIFACT_KEY}-rounds",
        description="Per-round metrics of every site with federation, and of all sites' records pooled",
    )
    create_markdown_artifact(markdown=run_markdown(summary, uris), key=f"{ARTIFACT_KEY}-summary",
                             description="Run summary")
    create_link_artifact(
        link=result_url,
        link_text="result.png",
        key=f"{ARTIFACT_KEY}-result-plot",
        description="Test accuracy and loss per round: federated, each site alone, centralised",
    )
    if result_url.startswith(("http://", "https://")):
        create_image_artifact(image_url=result_url, key=f"{ARTIFACT_KEY}-result-image", description="result.png")
