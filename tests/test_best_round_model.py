"""A run whose best round (lowest pooled test loss) is not its last keeps that round's model beside the last
one, through the real pipeline: the first site keeps every round's aggregate, the coordinator pools the test
losses and writes best-model.pt, and the registry points at it.

The oracles are not the code under test: the best round comes from the in-memory simulation of the same spec,
and the model's parameters are checked against the digest each leaf took of that round's aggregate when it
loaded it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedgrove.model import get_parameters
from fedgrove.model_card import load_model
from fedgrove.registry import Registry
from fedgrove.registry_store import LocalIndexStore
from fedgrove.results import parameter_digest
from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import read_source
from fedgrove.spec import FederationSpec
from fedgrove.split import split_table, write_split
from flows.federated_training import RunOptions, federated_training
from tests.data_sets import breast_cancer

pytestmark = pytest.mark.slow

# An MLP with Adam that overfits after a few rounds: its pooled test loss is lowest at round 3 of 6.
KEYS = {"target": "diagnosis", "select": {"k": 5}, "model": {"kind": "mlp", "hidden": [32]},
        "train": {"rounds": 6, "optimizer": "adam", "learning_rate": 0.02}}


def pooled_test_losses(results) -> list[float]:  # type: ignore[no-untyped-def]
    total = sum(result.test_records for result in results)
    return [sum(result.test_records * result.federated[r].test.values["loss"] for result in results) / total
            for r in range(len(results[0].federated))]


def test_a_run_keeps_its_best_rounds_model_beside_its_last(
    prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_SPEC", "FEDGROVE_SITE_DATA"):
        monkeypatch.delenv(name, raising=False)
    paths = write_split(split_table(breast_cancer(), target="diagnosis", sites=2, seed=3), tmp_path / "sites")
    spec = FederationSpec.model_validate({**KEYS, "sites": {s: {"data": str(p)} for s, p in paths.items()}})
    tables = {site: table_for_spec(read_source(source), spec, site) for site, source in spec.sites.items()}
    losses = pooled_test_losses(simulate(spec, tables, baselines=False, centralised=False).results)
    best_round = int(np.argmin(losses)) + 1
    assert best_round < len(losses)  # the premise: an earlier round is better than the last

    federated_training(spec, RunOptions(run_id="best-round"))

    run_dir = tmp_path / "runs" / "best-round"
    entry = Registry(LocalIndexStore(tmp_path / "runs")).entry("best-round")
    assert (entry.best.round, entry.final.round) == (best_round, len(losses))
    assert entry.best.metrics["loss_test"] == pytest.approx(losses[best_round - 1], abs=1e-5)
    assert (entry.final_model, entry.best_model) == (str(run_dir / "model.pt"), str(run_dir / "best-model.pt"))

    best, best_card = load_model(run_dir / "best-model.pt")
    final, _ = load_model(run_dir / "model.pt")
    for site in spec.roster():
        digests = json.loads((run_dir / f"site-{site}.json").read_text())["parameter_digests"]
        assert parameter_digest(get_parameters(best)) == digests[best_round - 1]
        assert parameter_digest(get_parameters(final)) == digests[-1]
    assert best_card.metrics == entry.best.metrics
    assert best_card.metrics["loss_test"] < json.loads((run_dir / "model.json").read_text())["metrics"]["loss_test"]
    assert [p.name for p in run_dir.glob("site-*-round-models.npz")] == ["site-site-1-round-models.npz"]
