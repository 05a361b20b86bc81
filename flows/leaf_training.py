"""`leaf-training`: one organisation's side of federated training, run where its data lives.

Credentials come from the environment or the `.env` file named in the config (never from a parameter):
the flow's parameters are shown in the Prefect UI and stored with every run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import update_progress_artifact
from pydantic import BaseModel, Field

from fedgrove.features import FeatureSelection
from fedgrove.model import TrainConfig, build_model, get_parameters
from fedgrove.settings import LeafSettings
from fedgrove.simulation import leaf_seed
from tasks.data import load_leaf_data
from tasks.outputs import publish_leaf_result
from tasks.federation import connect_leaf, load_aggregate, report_performance, upload_parameters, wait_for_aggregation
from tasks.training import evaluate_and_track, fit_local


class LeafTrainingConfig(BaseModel):
    organisation: str
    data_path: Path
    test_path: Path
    selection: FeatureSelection
    rounds: int = Field(default=50, ge=1)
    train: TrainConfig = TrainConfig()
    seed: int = 0
    env_file: Path | None = Field(default=None, description="this leaf's credentials (.env); default: environment")
    work_dir: Path = Path(".fedgrove/leaf")
    aggregation_timeout_s: float = Field(default=120.0, gt=0)
    progress_artifact_id: str | None = None
    run_id: str = Field(default="leaf", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    artifacts: str | None = Field(default=None, description="artifact store for this leaf's result (no secrets)")


class LeafTrainingResult(BaseModel):
    organisation: str
    leaf_name: str
    records: int
    history: list[dict[str, float]]
    parameter_digests: list[str]
    round_seconds: list[float]
    parameters_path: Path


def parameter_digest(parameters: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for layer in parameters:
        digest.update(str((layer.shape, layer.dtype.str)).encode())
        digest.update(np.ascontiguousarray(layer).tobytes())
    return digest.hexdigest()


@flow(name="leaf-training")
def leaf_training(config: LeafTrainingConfig) -> LeafTrainingResult:
    logger = get_run_logger()
    settings = LeafSettings.load(config.env_file)
    data = load_leaf_data(config.data_path, config.test_path, config.selection)
    session = connect_leaf(settings, config.work_dir)
    parameters = get_parameters(build_model(len(config.selection.features), seed=config.seed))
    seed = leaf_seed(config.seed, config.organisation)
    history, digests, round_seconds = [], [], []
    try:
        for round_number in range(1, config.rounds + 1):
            round_started = time.perf_counter()
            local = fit_local(parameters, data, config=config.train, seed=seed, round_number=round_number)
            upload_parameters(session, local, weighting=float(data.records), round_number=round_number)
            aggregation_id = wait_for_aggregation(
                session, round_number=round_number, timeout_s=config.aggregation_timeout_s
            )
            parameters = load_aggregate(session, aggregation_id, template=local)
            metrics = evaluate_and_track(parameters, data, round_number=round_number, leaf_name=settings.leaf_name)
            history.append(asdict(metrics))
            digests.append(parameter_digest(parameters))
            round_seconds.append(time.perf_counter() - round_started)
            if round_number == config.rounds or round_number % 10 == 0:
                report_performance(session, aggregation_id, asdict(metrics))
            if config.progress_artifact_id:
                update_progress_artifact(config.progress_artifact_id, 100.0 * round_number / config.rounds)
            logger.info(
                "%s round %d/%d: accuracy_test %.3f, loss_test %.4f",
                config.organisation, round_number, config.rounds, metrics.accuracy_test, metrics.loss_test,
            )
    finally:
        session.close()
    parameters_path = config.work_dir / "final-parameters.npz"
    np.savez(parameters_path, **{f"layer_{i}": layer for i, layer in enumerate(parameters)})
    result = LeafTrainingResult(
        organisation=config.organisation,
        leaf_name=settings.leaf_name,
        records=data.records,
        history=history,
        parameter_digests=digests,
        round_seconds=round_seconds,
        parameters_path=parameters_path,
    )
    publish_leaf_result(
        run_id=config.run_id,
        artifacts_url=config.artifacts,
        organisation=config.organisation,
        result=result.model_dump(mode="json"),
        parameters_path=parameters_path,
    )
    return result
