"""Warm start (`train.init_from`): a run starts from a registered model's parameters when the model reads the same
inputs with the same architecture, and is refused, naming every difference, when it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks.training
from fedgrove.demo import DemoOptions
from fedgrove.encoding import EncodedColumn, Preprocessing
from fedgrove.model_card import ModelCard
from fedgrove.registry import RegistryIndex
from fedgrove.spec import FederationSpec, ModelSpec
from fedgrove.warm_start import WarmStartRefused, input_differences, registered_run
from flows.federated_training import RunOptions, federated_training
from tests.test_registry import entry


def _index() -> RegistryIndex:
    return RegistryIndex(runs={"week-1": entry("week-1", accuracy=0.95), "week-2": entry("week-2", status="failed")},
                         latest="week-1", production=None)


def test_init_from_names_a_registered_run_or_none_and_refuses_what_cannot_start_a_run() -> None:
    index = _index()
    assert registered_run(index, "none", location="runs/registry/index.json") is None
    assert registered_run(index, "latest", location="runs/registry/index.json") == "week-1"
    assert registered_run(index, "production", location="runs/registry/index.json") is None  # a first week
    assert registered_run(index, "week-1", location="runs/registry/index.json") == "week-1"
    with pytest.raises(WarmStartRefused) as caught:
        registered_run(index, "week-9", location="runs/registry/index.json")
    assert str(caught.value) == ("train.init_from: run week-9 is not in the model registry at "
                                 "runs/registry/index.json (fix: `fedgrove models list` shows the runs; or use "
                                 "latest, production or none)")
    with pytest.raises(WarmStartRefused) as caught:
        registered_run(index, "week-2", location="runs/registry/index.json")
    assert str(caught.value) == ("train.init_from: run week-2 failed and has no model to start from (fix: name a "
                                 "completed run)")


def _preprocessing(columns: list[str], labels: list[str]) -> Preprocessing:
    return Preprocessing(target="outcome", labels=labels, numeric={c: 0.0 for c in columns}, categorical=[],
                         encoded=[EncodedColumn(name=c, column=c, mean=0.0, std=1.0) for c in columns],
                         training_records=100)


def test_every_difference_in_inputs_labels_and_architecture_is_named() -> None:
    spec = FederationSpec(task="binary", target="outcome", sites=["a", "b"])
    card = ModelCard(run_id="week-1", spec=spec, preprocessing=_preprocessing(["age", "bmi"], ["no", "yes"]),
                     n_inputs=2)
    assert input_differences(card, spec=spec, preprocessing=_preprocessing(["age", "bmi"], ["no", "yes"]),
                             n_outputs=1) == []
    changed = spec.model_copy(update={"model": ModelSpec(kind="mlp", hidden=[8])})
    assert input_differences(card, spec=changed, preprocessing=_preprocessing(["age", "smoker"], ["no", "yes"]),
                             n_outputs=1) == ["inputs: bmi gone, smoker new", "model.kind: logistic -> mlp"]
    wider = changed.model_copy(update={"model": ModelSpec(kind="mlp", hidden=[16])})
    card_mlp = card.model_copy(update={"spec": changed})
    assert input_differences(card_mlp, spec=wider, preprocessing=_preprocessing(["age", "bmi"], ["no", "yes"]),
                             n_outputs=1) == ["model.hidden: [8] -> [16]"]
    assert input_differences(card, spec=spec, preprocessing=_preprocessing(["bmi", "age"], ["no", "maybe", "yes"]),
                             n_outputs=3) == ["labels: ['no', 'yes'] -> ['no', 'maybe', 'yes']",
                                              "inputs: the same columns in another order (bmi, age)",
                                              "outputs: 1 -> 3"]


@pytest.mark.slow
def test_a_run_starts_from_production_and_a_run_with_another_model_is_refused(
    prefect_api, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = workspace
    demo = DemoOptions(sites=2, rounds=3)
    first = federated_training(None, RunOptions(run_id="week-1", demo=demo, init_from="production"))
    assert first["run_id"] == "week-1"  # production pointed nowhere: it trained from scratch, and is production now
    production = [layer.numpy() for layer in
                  torch.load(tmp_path / "runs" / "week-1" / "model.pt", weights_only=True).values()]

    started_from: dict[int, list[np.ndarray]] = {}
    real_fit = tasks.training.fit

    def fit_recording(parameters, arrays, *, spec, seed, epoch, state):  # type: ignore[no-untyped-def]
        if epoch == 1:
            started_from[seed] = [np.array(p, copy=True) for p in parameters]
        return real_fit(parameters, arrays, spec=spec, seed=seed, epoch=epoch, state=state)

    monkeypatch.setattr(tasks.training, "fit", fit_recording)
    federated_training(None, RunOptions(run_id="week-2", demo=demo, init_from="production"))
    assert len(started_from) == 2, "both sites fit round 1"
    for parameters in started_from.values():
        for got, expected in zip(parameters, production, strict=True):
            np.testing.assert_array_equal(got, expected)
    assert _record_of(tmp_path / "work" / "runs" / "week-2")["warm_start"] == "week-1"

    record_spec = FederationSpec.model_validate(_record_of(tmp_path / "work" / "runs" / "week-1")["spec"])
    mlp = record_spec.model_copy(update={
        "model": ModelSpec(kind="mlp", hidden=[4]),
        "train": record_spec.train.model_copy(update={"init_from": "week-1"})})
    state = federated_training(mlp, RunOptions(run_id="week-3"), return_state=True)
    assert state.is_failed()
    assert ("train.init_from: the model of run week-1 does not fit this run: model.kind: logistic -> mlp (fix: "
            "train from scratch with init_from: none, or keep the features, labels and model of that run)") \
        in state.message


def _record_of(work: Path) -> dict:
    return json.loads((work / "run.json").read_text())
