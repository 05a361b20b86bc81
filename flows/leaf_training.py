"""`leaf-training`: one organisation's side of federated training, run where its data lives.

Without a `selection` in its config, the leaf first standardises and selects features together with the
other leaves of its branch (`tasks.preprocessing`: sums only, no record leaves the organisation).

Credentials come from the environment or the `.env` file named in the config (never from a parameter):
the flow's parameters are shown in the Prefect UI and stored with every run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from fedgrove.federated_stats import DEFAULT_MIN_RECORDS
from fedgrove.features import FeatureSelection
from fedgrove.model import TrainConfig, build_model, get_parameters
from fedgrove.progress import ProgressReporter
from fedgrove.settings import LeafSettings
from fedgrove.simulation import leaf_seed
from tasks.data import load_leaf_data
from tasks.outputs import publish_leaf_result
from tasks.federation import connect_leaf, load_aggregate, report_performance, upload_parameters, wait_for_aggregation
from tasks.preprocessing import federated_feature_selection, read_training_records
from tasks.training import evaluate_and_track, fit_local


class LeafTrainingConfig(BaseModel):
    organisation: str
    data_path: Path
    test_path: Path
    selection: FeatureSelection | None = Field(
        default=None, description="shared standardisation and features; None: select them federatedly (LRT)"
    )
    features: int = Field(default=4, ge=1, le=30, description="how many features federated selection keeps")
    min_records: int = Field(
        default=DEFAULT_MIN_RECORDS, ge=1, description="fewer training records: refuse federated preprocessing"
    )
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
    selection: FeatureSelection
    preprocessing: Literal["federated", "pooled"]


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
    session = connect_leaf(settings, config.work_dir)
    seed = leaf_seed(config.seed, config.organisation)
    history, digests, round_seconds = [], [], []
    progress = ProgressReporter(config.progress_artifact_id, logger=logger) if config.progress_artifact_id else None
    try:
        selection = config.selection
        if selection is None:
            selection = federated_feature_selection(
                session, read_training_records(config.data_path), k=config.features,
                min_records=config.min_records, timeout_s=config.aggregation_timeout_s,
            )
        data = load_leaf_data(config.data_path, config.test_path, selection)
        parameters = get_parameters(build_model(len(selection.features), seed=config.seed))
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
            if progress is not None:
                progress.report(100.0 * round_number / config.rounds)
            logger.info(
                "%s round %d/%d: accuracy_test %.3f, loss_test %.4f",
                config.organisation, round_number, config.rounds, metrics.accuracy_test, metrics.loss_test,
            )
    finally:
        if progress is not None:
            progress.close()  # never raises, so the session below is closed whatever happens here
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
        selection=selection,
        preprocessing="pooled" if config.selection is not None else "federated",
    )
    publish_leaf_result(
        run_id=config.run_id,
        artifacts_url=config.artifacts,
        organisation=config.organisation,
        result=result.model_dump(mode="json"),
        parameters_path=parameters_path,
    )
    return result
