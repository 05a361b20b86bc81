"""Warm start: a run begins from a registered model's parameters instead of fresh ones.

Why this module exists: a weekly retrain on a little more data should not start from scratch each week. The
spec's `train.init_from` names the model (`latest`, `production` or a run id in the model registry); each site,
once the preprocessing is agreed, checks that the registered model reads the same inputs (the same encoded
columns in the same order: features, categorical levels and selection), predicts the same labels of the same
task, and has the same architecture, and then starts from its parameters. Anything else is refused with every
difference named. Standardisation statistics may differ: they are this week's, the inputs are the same.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from fedgrove.encoding import Preprocessing
from fedgrove.model_card import ModelCard
from fedgrove.registry import RegistryIndex
from fedgrove.spec import FederationSpec

POINTERS = ("latest", "production")


class WarmStartRefused(ValueError):
    """The registered model cannot start this run; the message names why and the fix."""


def registered_run(index: RegistryIndex, init_from: str, *, location: str) -> str | None:
    """The run whose model starts this one: None for `none`, and for a pointer that points nowhere yet (a first
    run trains from scratch)."""
    if init_from == "none":
        return None
    if init_from in POINTERS:
        return index.production if init_from == "production" else index.latest
    entry = index.runs.get(init_from)
    if entry is None:
        raise WarmStartRefused(f"train.init_from: run {init_from} is not in the model registry at {location} (fix: "
                               "`fedgrove models list` shows the runs; or use latest, production or none)")
    if entry.status != "completed" or entry.final_model is None:
        raise WarmStartRefused(f"train.init_from: run {init_from} {entry.status} and has no model to start from "
                               "(fix: name a completed run)")
    return init_from


def input_differences(card: ModelCard, *, spec: FederationSpec, preprocessing: Preprocessing,
                      n_outputs: int) -> list[str]:
    """What differs between the registered model's inputs and architecture and this run's."""
    found: list[str] = []
    before, now = card.preprocessing, preprocessing
    if before.task != now.task:
        found.append(f"task: {before.task} -> {now.task}")
    if before.target != now.target:
        found.append(f"target: {before.target} -> {now.target}")
    if [str(x) for x in before.labels] != [str(x) for x in now.labels]:
        found.append(f"labels: {before.labels} -> {now.labels}")
    old_inputs, new_inputs = before.input_names, now.input_names
    if old_inputs != new_inputs:
        gone = [name for name in old_inputs if name not in new_inputs]
        added = [name for name in new_inputs if name not in old_inputs]
        if gone or added:
            found.append(f"inputs: {', '.join(gone) or 'none'} gone, {', '.join(added) or 'none'} new")
        else:
            found.append(f"inputs: the same columns in another order ({', '.join(new_inputs)})")
    old_model, new_model = card.spec.model.model_dump(mode="json"), spec.model.model_dump(mode="json")
    if old_model["kind"] != new_model["kind"]:
        found.append(f"model.kind: {old_model['kind']} -> {new_model['kind']}")  # its other keys are another model's
    else:
        for key in sorted(set(old_model) | set(new_model)):
            if old_model.get(key) != new_model.get(key):
                found.append(f"model.{key}: {old_model.get(key)} -> {new_model.get(key)}")
    if card.n_outputs != n_outputs:
        found.append(f"outputs: {card.n_outputs} -> {n_outputs}")
    return found


def warm_start_parameters(card: ModelCard, weights: bytes, *, run_id: str, spec: FederationSpec,
                          preprocessing: Preprocessing, n_outputs: int) -> list[np.ndarray]:
    """The registered model's parameters, in `get_parameters` order, once its inputs are this run's."""
    import torch

    differences = input_differences(card, spec=spec, preprocessing=preprocessing, n_outputs=n_outputs)
    if differences:
        raise WarmStartRefused(f"train.init_from: the model of run {run_id} does not fit this run: "
                               f"{'; '.join(differences)} (fix: train from scratch with init_from: none, or keep the "
                               "features, labels and model of that run)")
    state = torch.load(io.BytesIO(weights), weights_only=True)
    return [tensor.detach().cpu().numpy().astype(np.float32, copy=True) for tensor in state.values()]


def same_shapes(parameters: Sequence[np.ndarray], template: Sequence[np.ndarray]) -> bool:
    return len(parameters) == len(template) and all(a.shape == b.shape for a, b in zip(parameters, template,
                                                                                         strict=True))
