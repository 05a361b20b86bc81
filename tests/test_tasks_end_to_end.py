"""One run per task through the real pipeline (Prefect, the embedded aggregator, the official client), each
equal to the in-memory simulation of its spec: multiclass with an MLP and Adam, regression with a linear
model and the F-test, binary with the user's own module (BatchNorm: buffers federated too)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedgrove.predict import predict
from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import read_source
from fedgrove.spec import FederationSpec
from fedgrove.split import split_table, write_split
from flows.federated_training import RunOptions, federated_training
from tests.data_sets import breast_cancer, diabetes, wine

pytestmark = pytest.mark.slow

CASES = {
    "multiclass-mlp-adam": (wine, {"target": "cultivar", "task": "multiclass", "select": {"k": 6},
                                   "model": {"kind": "mlp", "hidden": [16, 8], "dropout": 0.1},
                                   "train": {"rounds": 3, "optimizer": "adam", "learning_rate": 0.01}}),
    "regression-linear-fedprox": (diabetes, {"target": "progression", "task": "regression", "select": {"k": 6},
                                             "train": {"rounds": 3, "learning_rate": 0.05, "proximal_mu": 0.1}}),
    "binary-user-module": (breast_cancer, {"target": "diagnosis", "select": {"k": 5},
                                           "model": {"kind": "python", "builder": "tests.site_models.networks:"
                                                     "batchnorm_net", "options": {"width": 8}},
                                           "train": {"rounds": 3, "learning_rate": 0.05, "batch_size": 16}}),
}


@pytest.fixture(scope="module", params=list(CASES))
def finished(request, prefect_api, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One run per case, shared by the tests below."""
    load, keys = CASES[request.param]
    tmp_path = tmp_path_factory.mktemp(request.param)
    monkeypatch = pytest.MonkeyPatch()
    request.addfinalizer(monkeypatch.undo)
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_SPEC", "FEDGROVE_SITE_DATA"):
        monkeypatch.delenv(name, raising=False)
    paths = write_split(split_table(load(), target=keys["target"], sites=3, seed=3), tmp_path / "sites")
    spec = FederationSpec.model_validate({**keys, "sites": {s: {"data": str(p)} for s, p in paths.items()}})
    summary = federated_training(spec, RunOptions(run_id=request.param))
    tables = {site: table_for_spec(read_source(source), spec, site) for site, source in spec.sites.items()}
    return {"spec": spec, "summary": summary, "run_dir": tmp_path / "runs" / request.param,
            "simulation": simulate(spec, tables), "tables": tables}


def test_the_pipeline_equals_the_simulation_of_the_same_spec_to_1e_5(finished) -> None:  # type: ignore[no-untyped-def]
    summary, simulation = finished["summary"], finished["simulation"]
    state = torch.load(finished["run_dir"] / "model.pt", weights_only=True)
    for got, expected in zip(state.values(), simulation.parameters, strict=True):
        np.testing.assert_allclose(got.numpy().astype(np.float64), expected, rtol=1e-5, atol=1e-6)
    names = summary["metrics"]
    for result in simulation.results:
        site = summary["sites"][result.site]
        for name in names:
            expected = result.federated[-1].test.get(name)
            if expected is not None:
                assert site["federated"][f"{name}_test"] == pytest.approx(expected, rel=1e-5, abs=1e-9), name
    for name in names:
        expected = simulation.centralised[-1].test.get(name)
        if expected is not None:
            assert summary["centralised"][f"{name}_test"] == pytest.approx(expected, rel=1e-5, abs=1e-9), name


def test_the_saved_model_predicts_in_the_users_labels_or_units(finished) -> None:  # type: ignore[no-untyped-def]
    spec = finished["spec"]
    table = next(iter(finished["tables"].values()))
    out = predict(finished["run_dir"] / "model.pt", table.test.drop(columns=[spec.target]))
    card = json.loads((finished["run_dir"] / "model.json").read_text())
    if spec.task == "regression":
        assert list(out.columns) == ["prediction"]
        assert out["prediction"].between(table.train[spec.target].min() - 200, table.train[spec.target].max() + 200).all()
        assert card["preprocessing"]["target_mean"] > 100  # the units of disease progression, not standardised
    else:
        labels = card["preprocessing"]["labels"]
        assert list(out.columns) == ["prediction", "probability", *(f"probability_{label}" for label in labels)]
        np.testing.assert_allclose(out[[f"probability_{label}" for label in labels]].sum(axis=1), 1.0, rtol=1e-6)
        assert set(out["prediction"]) <= set(labels)
    epochs = pd.read_csv(finished["run_dir"] / "epochs.csv")
    assert {f"{name}_test" for name in finished["summary"]["metrics"]} <= set(epochs.columns)


def test_a_site_without_test_records_takes_part_and_the_pooled_test_metrics_count_the_others(
    prefect_api, tmp_path, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    """A regression site of 10 records at test_fraction 0.04 holds out none. Its first evaluation raised
    (`cannot reshape tensor of 0 elements`) and stopped the federation; now it trains, reports no test
    metrics, and the run equals the simulation."""
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_SPEC", "FEDGROVE_SITE_DATA"):
        monkeypatch.delenv(name, raising=False)
    frame = diabetes()
    (tmp_path / "sites").mkdir()
    paths = {}
    for site, part in {"site-1": frame.iloc[:10], "site-2": frame.iloc[10:210], "site-3": frame.iloc[210:]}.items():
        paths[site] = tmp_path / "sites" / f"{site}.csv"
        part.to_csv(paths[site], index=False)
    spec = FederationSpec.model_validate({
        "target": "progression", "task": "regression", "evaluation": {"test_fraction": 0.04},
        "train": {"rounds": 3, "learning_rate": 0.05}, "sites": {s: {"data": str(p)} for s, p in paths.items()}})
    summary = federated_training(spec, RunOptions(run_id="no-test-records"))
    assert [summary["sites"][s]["test_records"] for s in ("site-1", "site-2", "site-3")] == [0, 8, 9]
    assert summary["sites"]["site-1"]["federated"] == {}  # test figures only, and it has no test records
    tables = {site: table_for_spec(read_source(source), spec, site) for site, source in spec.sites.items()}
    simulation = simulate(spec, tables, baselines=False, centralised=False)
    pooled = pd.Series([r.federated[-1].test.sums["se"] for r in simulation.results[1:]]).sum() / 17
    assert summary["federated_pooled"]["rmse_test"] == pytest.approx(float(np.sqrt(pooled)), rel=1e-5)
