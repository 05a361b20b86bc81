"""The coordinator flow end to end on one machine: real Prefect, the embedded aggregator, the official client,
every site's leaf reading only its own file, compared with the in-memory simulation of the same spec."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client

import tasks.provisioning
from fedgrove.demo import DemoOptions, demo_spec
from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import read_source
from fedgrove.spec import FederationSpec
from flows.federated_training import RunOptions, federated_training
from tests.pooled_reference import lrt_statistics, pooled_preprocessing, top_k

pytestmark = pytest.mark.slow
ROUNDS = 3
OUTPUT_FILES = ("model.pt", "model.json", "result.png", "epochs.csv", "summary.json")


@pytest.fixture(scope="module")
def demo_run(prefect_api, tmp_path_factory, request):  # type: ignore[no-untyped-def]
    """The built-in demo (3 rounds), shared by the assertions below; records every session token handed out."""
    root = tmp_path_factory.mktemp("demo")
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(root / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(root / "runs"))
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    tokens: list[str] = []
    original = tasks.provisioning.write_leaf_env

    def recording_write_leaf_env(path, credentials, host):  # type: ignore[no-untyped-def]
        tokens.append(credentials["session_token"])
        return original(path, credentials, host)

    monkeypatch.setattr(tasks.provisioning, "write_leaf_env", recording_write_leaf_env)
    summary = federated_training(None, RunOptions(run_id="e2e", demo=DemoOptions(rounds=ROUNDS)))
    return {"summary": summary, "root": root, "tokens": tokens}


def site_files_spec(root: Path, run_id: str) -> FederationSpec:
    """The demo's spec over the site files its run wrote."""
    data = root / "work" / "runs" / run_id / "data"
    return demo_spec({f"site-{i}": data / f"site-{i}.csv" for i in range(1, 6)}, DemoOptions(rounds=ROUNDS))


def simulation_of(spec: FederationSpec):  # type: ignore[no-untyped-def]
    """The same spec in memory, each site's table read from the same source as its leaf read."""
    tables = {
        site: table_for_spec(read_source(source), spec, site)
        for site, source in spec.sites.items()
    }
    return simulate(spec, tables), tables


def assert_equals_simulation(summary: dict, run_dir: Path, spec: FederationSpec) -> None:
    simulation, _ = simulation_of(spec)
    import torch

    state = torch.load(run_dir / "model.pt", weights_only=True)
    for got, expected in zip(state.values(), simulation.parameters, strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    for result in simulation.results:
        got = summary["sites"][result.site]
        assert got["federated"]["loss_test"] == pytest.approx(result.federated[-1].test.get("loss"), rel=1e-5)
        assert got["federated"]["accuracy_test"] == pytest.approx(result.federated[-1].test.get("accuracy"))
        assert got["alone"]["loss_test"] == pytest.approx(result.alone[-1].test.get("loss"), rel=1e-5)


def test_every_output_of_the_demo_exists_with_per_site_and_pooled_metrics(demo_run) -> None:
    run_dir = demo_run["root"] / "runs" / "e2e"
    for name in OUTPUT_FILES:
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["mode"] == "local"
    assert set(summary["sites"]) == {f"site-{i}" for i in range(1, 6)}
    for figures in summary["sites"].values():
        assert set(figures["federated"]) == set(figures["alone"]) == {"accuracy_test", "loss_test", "auc_test"}
    assert set(summary["federated_pooled"]) == set(summary["centralised"]) == {"accuracy_test", "loss_test",
                                                                               "auc_test"}
    assert sum(f["records"] + f["test_records"] for f in summary["sites"].values()) == 569
    assert summary["identical_models"] is True
    epochs = pd.read_csv(run_dir / "epochs.csv")
    assert epochs.groupby("mode").size().to_dict() == {"alone": 5 * ROUNDS, "centralised": ROUNDS,
                                                       "federated": 5 * ROUNDS, "federated_pooled": ROUNDS}


def test_the_sites_select_the_pooled_features_federatedly(demo_run) -> None:
    card = json.loads((demo_run["root"] / "runs" / "e2e" / "model.json").read_text())
    _, tables = simulation_of(site_files_spec(demo_run["root"], "e2e"))
    train = pd.concat([t.train for t in tables.values()], ignore_index=True)
    numeric = [c for c in train.columns if c != "diagnosis"]
    pooled = pooled_preprocessing(train, numeric=numeric, categorical=[], min_category_count=5)
    expected, p_values = top_k(lrt_statistics(pooled, (train["diagnosis"] == "malignant").to_numpy(float)), 4)
    assert card["preprocessing"]["selected"] == expected == demo_run["summary"]["features"]
    np.testing.assert_allclose(card["preprocessing"]["p_values"], p_values, rtol=1e-6)


def test_the_demo_equals_its_in_memory_simulation_to_1e_5(demo_run) -> None:
    """Server, Prefect and the official client change nothing in the arithmetic of FedAvg."""
    run_dir = demo_run["root"] / "runs" / "e2e"
    assert_equals_simulation(demo_run["summary"], run_dir, site_files_spec(demo_run["root"], "e2e"))


def test_no_session_token_appears_in_prefect_logs_parameters_or_artifacts(demo_run) -> None:
    tokens = demo_run["tokens"]
    assert len(tokens) == 5

    async def everything_prefect_stored() -> str:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            logs, offset = [], 0
            while page := await client.read_logs(limit=200, offset=offset):
                logs += page
                offset += len(page)
            artifacts = await client.read_artifacts()
        return json.dumps([[run.parameters for run in runs], [log.message for log in logs],
                           [artifact.data for artifact in artifacts]], default=str)

    stored = asyncio.run(everything_prefect_stored())
    assert f"round {ROUNDS}/{ROUNDS}" in stored  # the logs were read
    for token in tokens:
        assert token not in stored
    for path in Path(demo_run["root"]).rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv", ".env", ".log", ".txt"}:
            text = path.read_text(errors="ignore")
            assert not any(token in text for token in tokens), path


def test_an_upload_task_failing_after_its_upload_is_retried_and_changes_nothing(prefect_api, workspace) -> None:
    """An exception after a successful upload: Prefect retries the task, the server replaces the leaf's
    contribution instead of counting it twice, and the model is the one of an undisturbed run."""
    import branchkey

    real_upload = branchkey.Client.file_upload
    injected: list[str] = []

    def upload_then_fail_once(self, file_path):  # type: ignore[no-untyped-def]
        file_id = real_upload(self, file_path)
        if not injected and "site-2" in file_path and file_path.endswith("round-2.npz"):
            injected.append(file_id)
            raise ConnectionResetError("injected: the 201 was lost on the way back")
        return file_id

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(branchkey.Client, "file_upload", upload_then_fail_once)
    try:
        summary = federated_training(None, RunOptions(run_id="retry", demo=DemoOptions(rounds=ROUNDS)))
    finally:
        monkeypatch.undo()
    assert len(injected) == 1
    assert summary["identical_models"] is True
    assert_equals_simulation(summary, workspace / "runs" / "retry", site_files_spec(workspace, "retry"))
