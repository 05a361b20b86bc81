"""Tasks that write a run's outputs to the artifact store and describe the run in the Prefect UI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact, create_table_artifact

from fedgrove.artifacts import artifact_store_from_url
from fedgrove.features import FeatureSelection
from fedgrove.model import build_model, save_model, set_parameters
from tasks.options import LOCAL, TRANSIENT

OUTPUT_FILES = ("model.pt", "model.json", "result.png", "epochs.csv", "summary.json")


def leaf_result_names(organisation: str) -> tuple[str, str]:
    return f"leaf-{organisation}.json", f"leaf-{organisation}-parameters.npz"


@task(name="publish-leaf-result", **TRANSIENT)
def publish_leaf_result(
    *, run_id: str, artifacts_url: str | None, organisation: str, result: dict, parameters_path: Path
) -> dict[str, str]:
    """Put a leaf's history and final parameters in the run folder, where the coordinator reads them
    (in sites mode the leaf runs on another machine)."""
    summary_name, parameters_name = leaf_result_names(organisation)
    staged = parameters_path.with_name(summary_name)
    staged.write_text(json.dumps(result, indent=2) + "\n")
    store = artifact_store_from_url(artifacts_url)
    return store.publish_run(run_id, {summary_name: staged, parameters_name: parameters_path})


def read_leaf_result(*, run_id: str, artifacts_url: str | None, organisation: str, scratch: Path) -> tuple[dict, Path]:
    summary_name, parameters_name = leaf_result_names(organisation)
    store = artifact_store_from_url(artifacts_url)
    scratch.mkdir(parents=True, exist_ok=True)
    parameters_path = scratch / parameters_name
    parameters_path.write_bytes(store.read_bytes(run_id, parameters_name))
    return json.loads(store.read_bytes(run_id, summary_name)), parameters_path


@task(name="write-outputs", **TRANSIENT)
def write_outputs(
    *,
    run_id: str,
    staging: Path,
    artifacts_url: str | None,
    epochs: pd.DataFrame,
    selection: FeatureSelection,
    parameters: list[np.ndarray],
    summary: dict,
) -> tuple[dict[str, str], str]:
    """Stage model, plot, per-epoch metrics and summary, then publish them all (or none) to the store.

    Returns each output's URI and a URL to `result.png`."""
    staging.mkdir(parents=True, exist_ok=True)
    model = build_model(len(selection.features), seed=0)
    set_parameters(model, parameters)
    final = {k: v for k, v in summary["federated_mean"].items()}
    save_model(model, staging / "model.pt", selection=selection, metrics=final)
    epochs.to_csv(staging / "epochs.csv", index=False)
    from fedgrove.plotting import plot_results  # matplotlib (~25 MB, ~0.5 s) only once training is over
    plot_results(epochs, staging / "result.png")
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    store = artifact_store_from_url(artifacts_url)
    uris = store.publish_run(run_id, {name: staging / name for name in OUTPUT_FILES})
    return uris, store.url(run_id, "result.png")


def _markdown(summary: dict, uris: dict[str, str]) -> str:
    lines = [
        f"# Federated training run `{summary['run_id']}`",
        "",
        f"{len(summary['federated'])} organisations, {summary['rounds']} rounds, split `{summary['split']}`, "
        f"preprocessing `{summary['preprocessing']}`, features: {', '.join(summary['features'])}.",
        "",
        "| organisation | federated accuracy (test) | alone accuracy (test) | federated loss | alone loss |",
        "|---|---|---|---|---|",
    ]
    for org, federated in summary["federated"].items():
        alone = summary["local_only"][org]
        lines.append(
            f"| {org} | {federated['accuracy_test']:.3f} | {alone['accuracy_test']:.3f} "
            f"| {federated['loss_test']:.4f} | {alone['loss_test']:.4f} |"
        )
    central = summary["centralised"]
    lines += [
        f"| **centralised** | {central['accuracy_test']:.3f} | | {central['loss_test']:.4f} | |",
        "",
        f"Identical models at every leaf after every round: **{summary['identical_models']}**. "
        f"Wall time: {summary['wall_s']:.1f} s.",
        "",
        "Outputs:",
        *[f"- `{name}`: {uri}" for name, uri in uris.items()],
    ]
    return "\n".join(lines)


@task(name="publish-prefect-artifacts", **LOCAL)
def publish_prefect_artifacts(*, summary: dict, epochs: pd.DataFrame, uris: dict[str, str], result_url: str) -> None:
    key = "federated-training"
    federated = epochs[epochs["mode"] == "federated"].round(4)
    create_table_artifact(
        table=federated.to_dict(orient="records"),
        key=f"{key}-rounds",
        description="Per-round metrics of every organisation with federation",
    )
    create_markdown_artifact(markdown=_markdown(summary, uris), key=f"{key}-summary", description="Run summary")
    create_link_artifact(
        link=result_url,
        link_text="result.png",
        key=f"{key}-result-plot",
        description="Test accuracy and loss per round: federated, each organisation alone, centralised",
    )
    if result_url.startswith(("http://", "https://")):
        create_image_artifact(image_url=result_url, key=f"{key}-result-image", description="result.png")
