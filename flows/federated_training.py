"""`federated-training`: the coordinator. Splits the data, sets up the federation, runs every organisation's
`leaf-training` flow at once (they standardise and pick the features together from sums, or the coordinator
picks them on the pooled partitions with `preprocessing="pooled"`), then the baselines, and writes the outputs."""

from __future__ import annotations

import contextvars
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel, Field

from fedgrove.data import organisation_names
from fedgrove.features import FeatureSelection
from fedgrove.model import TrainConfig
from fedgrove.settings import PipelineSettings
from fedgrove.simulation import leaf_seed
from fedgrove.tracking import track_run_configuration
from flows.baselines import baselines
from flows.sites import run_leaf_deployments
from flows.leaf_training import LeafTrainingConfig, LeafTrainingResult, leaf_training
from tasks.data import prepare_partitions
from tasks.features import select_features_pooled
from tasks.outputs import publish_prefect_artifacts, write_outputs
from tasks.provisioning import federation


class FederatedTrainingConfig(BaseModel):
    organisations: int = Field(default=5, ge=1, le=100)
    rounds: int = Field(default=50, ge=1)
    split: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    seed: int = 0
    features: int = Field(default=4, ge=1, le=30)
    preprocessing: Literal["federated", "pooled"] = Field(
        default="federated",
        description="federated: the leaves standardise and select features from sums of their own records; "
        "pooled: the coordinator does it on every training partition (needs all the data in one place)",
    )
    min_records: int = Field(default=10, ge=1, description="a leaf with fewer records refuses federated preprocessing")
    train: TrainConfig = TrainConfig()
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    round_timeout_s: float | None = Field(
        default=None, gt=0, description="aggregate without the leaves missing this long after the first upload"
    )
    min_leaves: int | None = Field(default=None, ge=1, description="quorum for a timed-out round")
    sites: bool = Field(
        default=False,
        description="run each organisation's leaf-training/<organisation> deployment on its own worker "
        "(credentials in the workers' environment) instead of in-process leaves on an embedded aggregator",
    )


class LeafFlowsFailed(RuntimeError):
    """One or more organisations did not finish; the others' outputs were written before this is raised."""


class SelectionMismatch(RuntimeError):
    """The leaves' federated feature selections differ (they are computed from the same sums: a bug)."""


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_leaves(configs: list[LeafTrainingConfig]) -> tuple[list[LeafTrainingResult], dict[str, str]]:
    """Run the leaf flows in threads, as subflows of this run; returns the results and, per failed
    organisation, why it failed (a failing leaf is data, reported at the end, not an exception here)."""
    with ThreadPoolExecutor(max_workers=len(configs), thread_name_prefix="leaf") as pool:
        futures = {
            config.organisation: pool.submit(contextvars.copy_context().run, leaf_training, config)
            for config in configs
        }
        outcomes = {org: future.exception() for org, future in futures.items()}
    failures = {org: str(exc) for org, exc in outcomes.items() if exc is not None}
    results = [futures[c.organisation].result() for c in configs if c.organisation not in failures]
    return results, failures


def agreed_selection(results: list[LeafTrainingResult]) -> FeatureSelection:
    """The one selection every leaf computed federatedly."""
    distinct = {r.selection.model_dump_json() for r in results}
    if len(distinct) != 1:
        raise SelectionMismatch(
            f"expected every leaf to compute the same federated selection, got {len(distinct)} different ones: "
            + "; ".join(f"{r.organisation}: {', '.join(r.selection.features)}" for r in results)
        )
    return results[0].selection


def _describe(failures: dict[str, str]) -> str:
    return "; ".join(f"{org}: {reason}" for org, reason in failures.items())


def shared_artifacts_url(url: str | None) -> str:
    """The artifact store as every process can reach it: a local folder made absolute."""
    if url and "://" in url:
        return url
    return str(Path(url or "runs").resolve())


def _final(history: list[dict[str, float]]) -> dict[str, float]:
    return {"accuracy_test": history[-1]["accuracy_test"], "loss_test": history[-1]["loss_test"]}


@flow(name="federated-training")
def federated_training(config: FederatedTrainingConfig = FederatedTrainingConfig()) -> dict:
    started = time.perf_counter()
    logger = get_run_logger()
    settings = PipelineSettings()
    run_id = config.run_id or new_run_id()
    track_run_configuration({**config.model_dump(), "run_id": run_id, "mode": "sites" if config.sites else "local"})
    work = settings.work_dir / "runs" / run_id
    organisations = organisation_names(config.organisations)
    paths = prepare_partitions(
        work / "data", organisations=config.organisations, split=config.split, alpha=config.alpha, seed=config.seed,
        # a leaf with fewer records refuses federated preprocessing, and the others would wait for it in vain
        min_records=config.min_records if config.preprocessing == "federated" else 1,
    )
    selection: FeatureSelection | None = None
    if config.preprocessing == "pooled":
        selection = select_features_pooled([paths[org] for org in organisations], k=config.features)
        logger.info("selected features on the pooled partitions: %s", ", ".join(selection.features))
    progress_id = create_progress_artifact(progress=0.0, key="federated-training-progress",
                                           description=f"Rounds completed, run {run_id}")
    artifacts_url = shared_artifacts_url(settings.artifacts)

    def leaf_config(index: int, org: str, env_file: Path | None) -> LeafTrainingConfig:
        return LeafTrainingConfig(
            organisation=org,
            data_path=paths[org].resolve(),
            test_path=paths["test"].resolve(),
            selection=selection,
            features=config.features,
            min_records=config.min_records,
            rounds=config.rounds,
            train=config.train,
            seed=config.seed,
            env_file=env_file,
            work_dir=(work / "leaves" / org).resolve(),
            aggregation_timeout_s=settings.aggregation_timeout_s,
            progress_artifact_id=str(progress_id) if index == 0 else None,
            run_id=run_id,
            artifacts=artifacts_url,
        )

    if config.sites:
        results, failures = run_leaf_deployments(
            [leaf_config(i, org, None) for i, org in enumerate(organisations)], scratch=work / "site-results"
        )
    else:
        with federation(
            settings,
            organisations=organisations,
            run_id=run_id,
            credentials_dir=work / "credentials",
            branch_options={
                key: value
                for key, value in {"round_timeout_s": config.round_timeout_s, "min_leaves": config.min_leaves}.items()
                if value is not None
            },
        ) as fed:
            results, failures = run_leaves([leaf_config(i, org, fed.env_files[org]) for i, org in enumerate(organisations)])
    if not results:
        raise LeafFlowsFailed(f"every leaf flow failed: {_describe(failures)}")
    if selection is None:
        selection = agreed_selection(results)
        logger.info("the leaves selected features federatedly: %s", ", ".join(selection.features))
    local_only, centralised = baselines(
        partition_paths={org: paths[org] for org in organisations},
        test_path=paths["test"],
        selection=selection,
        epochs=config.rounds,
        train=config.train,
        seeds={org: leaf_seed(config.seed, org) for org in organisations},
        seed=config.seed,
    )
    identical = all(len({r.parameter_digests[i] for r in results}) == 1 for i in range(config.rounds))
    epochs = pd.concat(
        [
            pd.DataFrame([{"mode": "federated", "organisation": r.organisation, **h} for r in results for h in r.history]),
            pd.DataFrame([{"mode": "local_only", "organisation": org, **h} for org, hs in local_only.items() for h in hs]),
            pd.DataFrame([{"mode": "centralised", "organisation": "all", **h} for h in centralised]),
        ],
        ignore_index=True,
    )
    federated = {r.organisation: _final(r.history) for r in results}
    summary = {
        "run_id": run_id,
        "rounds": config.rounds,
        "organisations": config.organisations,
        "split": config.split,
        "preprocessing": config.preprocessing,
        "features": selection.features,
        "p_values": selection.p_values,
        "records": {r.organisation: r.records for r in results},
        "centralised": _final(centralised),
        "federated": federated,
        "federated_mean": {
            key: float(np.mean([f[key] for f in federated.values()])) for key in ("accuracy_test", "loss_test")
        },
        "local_only": {org: _final(hs) for org, hs in local_only.items()},
        "identical_models": identical,
        "failed_organisations": failures,
        "seconds_per_round": float(np.median([max(r.round_seconds[i] for r in results) for i in range(config.rounds)])),
    }
    with np.load(results[0].parameters_path, allow_pickle=False) as archive:
        parameters = [archive[f"layer_{i}"] for i in range(len(archive.files))]
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    uris, result_url = write_outputs(
        run_id=run_id,
        staging=work / "outputs",
        artifacts_url=artifacts_url,
        epochs=epochs,
        selection=selection,
        parameters=parameters,
        summary=summary,
    )
    publish_prefect_artifacts(summary=summary, epochs=epochs, uris=uris, result_url=result_url)
    update_progress_artifact(progress_id, 100.0)
    logger.info("run %s finished in %.1f s; outputs: %s", run_id, summary["wall_s"], uris.get("result.png"))
    if failures:
        raise LeafFlowsFailed(
            f"leaf flows failed for {', '.join(failures)} ({_describe(failures)}); the outputs of the other "
            f"organisations are in {uris.get('summary.json')}"
        )
    return {**summary, "outputs": uris}
