"""The demo's task as fedgrove trains it, rewritten for Flower's side: load a site, one local fit, one evaluation.

Why this module exists: Flower's venv has no fedgrove, so the steps fedgrove runs at a site
(`fedgrove.model.train_local` and `fedgrove.site_training.measure` for the demo's logistic regression) are
written out here with torch alone, step for step: float32 tensors, one intra-op thread, shuffles from
`np.random.default_rng([site seed, round, local epoch]).permutation(records)`, batches in that order, the mean
BCE-with-logits loss of `nn.Linear(4, 1)`, and `p -= lr * grad`. A test record is right when (logit > 0) equals
(label > 0.5). The data and the config come from the folder `bench/peers/export_task.py` wrote.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TASK_ENV = "FEDGROVE_PEERS_TASK"
RESULT_ENV = "FEDGROVE_PEERS_RESULT"


def setting(run_config: Mapping[str, Any], key: str, env: str) -> str:
    """A path from the run config (`flwr run --run-config`), else from the environment (`run_simulation`
    passes no run config)."""
    value = str(run_config.get(key) or os.environ.get(env, ""))
    if not value:
        raise RuntimeError(f"expected run config {key!r} or environment variable {env}")
    return value


@dataclass(frozen=True)
class Site:
    """One site's standardised arrays (float32) and its shuffle seed."""

    name: str
    seed: int
    X: torch.Tensor
    y: torch.Tensor
    X_test: torch.Tensor
    y_test: np.ndarray


@functools.cache
def load_task(task_dir: str) -> dict[str, Any]:
    return json.loads((Path(task_dir) / "task.json").read_text())


@functools.cache
def load_site(task_dir: str, index: int) -> Site:
    """The site at position `index` of the task's roster (Flower's partition-id)."""
    entry = load_task(task_dir)["sites"][index]
    with np.load(Path(task_dir) / f"{entry['name']}.npz") as arrays:
        return Site(name=entry["name"], seed=int(entry["seed"]), X=torch.from_numpy(arrays["X"].copy()),
                    y=torch.from_numpy(arrays["y"].copy()).reshape(-1),
                    X_test=torch.from_numpy(arrays["X_test"].copy()), y_test=arrays["y_test"].copy())


def initial_parameters(task_dir: str) -> list[np.ndarray]:
    with np.load(Path(task_dir) / "initial.npz") as arrays:
        return [arrays[f"layer_{i}"].astype(np.float32) for i in range(len(arrays.files))]


def model_from(parameters: list[np.ndarray], task: Mapping[str, Any]) -> nn.Linear:
    """The logistic regression holding `parameters` (weight, bias: state_dict order)."""
    torch.set_num_threads(1)  # as fedgrove: a small model is several times faster on one thread
    model = nn.Linear(task["model"]["n_inputs"], task["model"]["n_outputs"])
    with torch.no_grad():
        for tensor, array in zip(model.state_dict().values(), parameters, strict=True):
            tensor.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))
    return model


def fit(parameters: list[np.ndarray], site: Site, task: Mapping[str, Any], server_round: int) -> list[np.ndarray]:
    """The round's local epochs of plain SGD from `parameters`; returns the new parameters (float32)."""
    train = task["train"]
    if train["optimizer"] != "sgd" or task["task"] != "binary":
        raise ValueError(f"this peer trains binary tasks with SGD only, got {task['task']} / {train['optimizer']}")
    model = model_from(parameters, task)
    weights = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for local_epoch in range(train["local_epochs"]):
        order = np.random.default_rng([site.seed, server_round, local_epoch]).permutation(len(site.X))
        for start in range(0, len(order), train["batch_size"]):
            batch = torch.from_numpy(order[start : start + train["batch_size"]])
            for weight in weights:
                weight.grad = None
            loss = nn.functional.binary_cross_entropy_with_logits(model(site.X[batch]).reshape(-1), site.y[batch])
            loss.backward()
            with torch.no_grad():
                for weight in weights:
                    weight.add_(weight.grad, alpha=-train["learning_rate"])
    return [t.detach().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def correct_on_test(parameters: list[np.ndarray], site: Site, task: Mapping[str, Any]) -> int:
    """How many of the site's test records the model classifies right (threshold: logit 0)."""
    model = model_from(parameters, task)
    model.eval()
    with torch.no_grad():
        logits = model(site.X_test).reshape(-1).numpy().astype(np.float64)
    return int(((logits > 0) == (site.y_test.astype(np.float64) > 0.5)).sum())
