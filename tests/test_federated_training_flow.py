"""The coordinator flow end to end: real Prefect, the embedded aggregator, official clients, 5 leaves."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client

import fedgrove.settings
import tasks.provisioning
from fedgrove.data import TARGET_COLUMN, read_partition
from fedgrove.features import FeatureSelection, select_features
from fedgrove.model import TrainConfig
from fedgrove.simulation import fedavg_in_memory
from flows.federated_training import FederatedTrainingConfig, federated_training

pytestmark = pytest.mark.slow
ROUNDS = 3


@pytest.fixture(scope="module")
def finished_run(prefect_api, tmp_path_factory, request):
    """One coordinator run shared by the assertions below; records every session token handed out."""
    root = tmp_path_factory.mktemp("run")
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(root / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(root / "runs"))
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    tokens: list[str] = []
    original = fedgrove.settings.write_leaf_env

    def recording_write_leaf_env(path, credentials, host):  # type: ignore[no-untyped-def]
        tokens.append(credentials["session_token"])
        return original(path, credentials, host)

    monkeypatch.setattr(tasks.provisioning, "write_leaf_env", recording_write_leaf_env)
    summary = federated_training(FederatedTrainingConfig(organisations=5, rounds=ROUNDS, run_id="e2e"))
    return {"summary": summary, "root": root, "tokens": tokens}


def test_every_output_of_the_run_exists(finished_run):
    run_dir = finished_run["root"] / "runs" / "e2e"
    for name in ("model.pt", "model.json", "result.png", "epochs.csv", "summary.json"):
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS
    assert len(summary["features"]) == 4
    assert set(summary["federated"]) == set(summary["local_only"]) == {f"org-{i}" for i in range(1, 6)}
    assert set(summary["centralised"]) == {"accuracy_test", "loss_test"}
    assert summary["wall_s"] > 0


def test_the_leaves_select_the_pooled_features_federatedly(finished_run):
    """Default preprocessing is federated: the leaves' selection from sums equals the pooled one."""
    run_dir = finished_run["root"] / "runs" / "e2e"
    summary = json.loads((run_dir / "summary.json").read_text())
    card = json.loads((run_dir / "model.json").read_text())
    data = finished_run["root"] / "work" / "runs" / "e2e" / "data"
    pooled = select_features(pd.concat([read_partition(data / f"org-{i}.csv") for i in range(1, 6)]), k=4)
    assert summary["preprocessing"] == "federated"
    assert card["method"] == "federated-lrt"
    assert summary["features"] == card["features"] == pooled.features
    np.testing.assert_allclose(summary["p_values"], pooled.p_values, rtol=1e-6)
    np.testing.assert_allclose(card["means"], pooled.means, rtol=1e-9)


def test_every_leaf_holds_identical_parameters_after_each_round(finished_run):
    assert finished_run["summary"]["identical_models"] is True


def test_epochs_carry_labels_for_every_organisation_and_mode(finished_run):
    epochs = pd.read_csv(finished_run["root"] / "runs" / "e2e" / "epochs.csv")
    federated = epochs[epochs["mode"] == "federated"]
    assert sorted(federated.groupby("organisation")["epoch"].apply(list).iloc[0]) == [1, 2, 3]
    assert len(federated) == 5 * ROUNDS
    assert len(epochs[epochs["mode"] == "local_only"]) == 5 * ROUNDS
    assert len(epochs[epochs["mode"] == "centralised"]) == ROUNDS


def in_memory_floor(root: Path, run_id: str, rounds: int) -> dict:
    """FedAvg on the run's own partitions and features, in memory: no server, no Prefect, no client."""
    work = root / "work" / "runs" / run_id / "data"
    card = json.loads((root / "runs" / run_id / "model.json").read_text())
    selection = FeatureSelection.model_validate({k: card[k] for k in FeatureSelection.model_fields})
    test = read_partition(work / "test.csv")
    partitions = {}
    for org in (f"org-{i}" for i in range(1, 6)):
        frame = read_partition(work / f"{org}.csv")
        partitions[org] = (selection.transform(frame), frame[TARGET_COLUMN].to_numpy(np.float32))
    return fedavg_in_memory(
        partitions, selection.transform(test), test[TARGET_COLUMN].to_numpy(np.float32),
        rounds=rounds, config=TrainConfig(), seed=0,
    )


def assert_matches_floor(summary: dict, floor: dict) -> None:
    for org, history in floor.items():
        got = summary["federated"][org]
        np.testing.assert_allclose(got["loss_test"], history[-1].loss_test, rtol=1e-5)
        assert got["accuracy_test"] == pytest.approx(history[-1].accuracy_test)


def test_federated_metrics_equal_the_in_memory_fedavg_floor(finished_run):
    """Server, Prefect and the official client change nothing in the arithmetic of FedAvg."""
    assert_matches_floor(finished_run["summary"], in_memory_floor(finished_run["root"], "e2e", ROUNDS))


def test_upload_task_failing_after_its_upload_is_retried_and_changes_nothing(prefect_api, tmp_path, monkeypatch):
    """An exception after a successful upload: Prefect retries the task, the server replaces the leaf's
    contribution instead of counting it twice, and the model is the one of an undisturbed run."""
    import branchkey

    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    real_upload = branchkey.Client.file_upload
    injected: list[str] = []

    def upload_then_fail_once(self, file_path):  # type: ignore[no-untyped-def]
        file_id = real_upload(self, file_path)
        if not injected and "org-2" in file_path and file_path.endswith("round-2.npz"):
            injected.append(file_id)
            raise ConnectionResetError("injected: the 201 was lost on the way back")
        return file_id

    monkeypatch.setattr(branchkey.Client, "file_upload", upload_then_fail_once)
    summary = federated_training(FederatedTrainingConfig(organisations=5, rounds=ROUNDS, run_id="retry"))
    assert len(injected) == 1
    assert summary["identical_models"] is True
    assert_matches_floor(summary, in_memory_floor(tmp_path, "retry", ROUNDS))


def test_no_session_token_appears_in_prefect_logs_parameters_or_artifacts(finished_run):
    tokens = finished_run["tokens"]
    assert len(tokens) >= 5  # this module's other runs add theirs

    async def everything_prefect_stored() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            logs, offset = [], 0
            while page := await client.read_logs(limit=200, offset=offset):
                logs += page
                offset += len(page)
            artifacts = await client.read_artifacts()
        return json.dumps(
            [
                [run.parameters for run in runs],
                [log.message for log in logs],
                [artifact.data for artifact in artifacts],
            ],
            default=str,
        )

    stored = asyncio.run(everything_prefect_stored())
    assert "round 3/3" in stored  # the logs were read
    for token in tokens:
        assert token not in stored
    for path in Path(finished_run["root"]).rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv", ".env", ".log", ".txt"}:
            text = path.read_text(errors="ignore")
            assert not any(token in text for token in tokens), path
