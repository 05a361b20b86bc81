"""The model every leaf trains: a PyTorch logistic regression, its local training step and its parameters.

Why this module exists: the leaves, the in-memory simulation and the baselines must share one definition of
"the model", one training loop and one parameter exchange format (float32 arrays in ``named_parameters()``
order: weight ``(1, k)``, bias ``(1,)``), so results are comparable and reproducible.

Training runs on one intra-op thread: a logistic-regression step was measured at ~0.65 ms with one thread
and ~4.9 ms with two on this kind of 2-core machine (on an idle machine the gap is small: 6.8 vs 7.4 ms per
5-leaf in-memory round); manual batching is another ~2x faster than a DataLoader.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedgrove.features import FeatureSelection

MODEL_FILE = "model.pt"


class TrainConfig(BaseModel):
    """Local training hyperparameters. Defaults: measured with ``fedavg_in_memory`` (5 organisations, 50 rounds,
    seeds 0-4): IID federated = centralised test accuracy, Dirichlet(0.5) federated > best organisation alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(default=0.3, gt=0)
    batch_size: int = Field(default=32, ge=1)
    local_epochs: int = Field(default=1, ge=1)
    optimizer: Literal["sgd"] = "sgd"


@functools.cache
def use_single_thread() -> None:
    """Set torch to one intra-op thread (once per process); small models are several times faster so."""
    torch.set_num_threads(1)


class _LinearWithoutDefaultInit(nn.Linear):
    """``nn.Linear`` whose constructor leaves the parameters uninitialised, for ``build_model`` to fill from its
    seed. The default init draws from torch's global RNG; ``torch.nn.utils.skip_init``, torch's own way around
    that, builds on the meta device, which imports sympy and torch's meta registrations (~480 modules, ~37 MB
    of RSS in every process that builds a model)."""

    def reset_parameters(self) -> None:
        pass


def build_model(n_features: int, *, seed: int) -> nn.Linear:
    """``nn.Linear(n_features, 1)`` initialised like torch's default, from ``seed`` (global RNG untouched)."""
    if n_features < 1:
        raise ValueError(f"expected n_features >= 1, got {n_features}")
    use_single_thread()
    model = _LinearWithoutDefaultInit(n_features, 1)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(n_features)
    with torch.no_grad():
        model.weight.uniform_(-bound, bound, generator=generator)
        model.bias.uniform_(-bound, bound, generator=generator)
    return model


def to_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor; arrays are copied (pandas 3 hands out read-only arrays, which torch cannot share)."""
    if isinstance(values, torch.Tensor):
        return values.to(torch.float32)
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))


def _as_tensors(X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    X_t = to_tensor(X)
    y_t = to_tensor(y).reshape(-1)
    if X_t.ndim != 2 or len(X_t) != len(y_t):
        raise ValueError(f"expected X of shape (n, k) and y of shape (n,), got {tuple(X_t.shape)} and "
                         f"{tuple(y_t.shape)}")
    return X_t, y_t


def train_local(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    config: TrainConfig,
    seed: int,
    epoch: int,
) -> None:
    """Train ``config.local_epochs`` passes of minibatch SGD in place; shuffles are seeded by (seed, epoch)."""
    use_single_thread()
    X_t, y_t = _as_tensors(X, y)
    parameters = list(model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for local_epoch in range(config.local_epochs):
        order = np.random.default_rng([seed, epoch, local_epoch]).permutation(len(X_t))
        for start in range(0, len(order), config.batch_size):
            batch = torch.from_numpy(order[start : start + config.batch_size])
            for parameter in parameters:
                parameter.grad = None
            loss = loss_fn(model(X_t[batch]).reshape(-1), y_t[batch])
            loss.backward()
            sgd_step(parameters, config.learning_rate)


def sgd_step(parameters: Sequence[torch.Tensor], learning_rate: float) -> None:
    """One plain SGD step, ``p -= learning_rate * p.grad``: the update ``torch.optim.SGD`` makes without momentum
    or weight decay, and with the same call. Creating a ``torch.optim`` optimizer imports torch's compiler
    stack (``torch._dynamo``, ``torch._inductor``: 320 modules, ~34 MB of RSS in every leaf process)."""
    with torch.no_grad():
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-learning_rate)


def evaluate(model: nn.Module, X: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """``(accuracy, mean log loss)`` of the model on ``(X, y)``; the threshold is probability 0.5."""
    use_single_thread()
    X_t, y_t = _as_tensors(X, y)
    if len(X_t) == 0:
        raise ValueError("expected at least one record to evaluate on, got 0")
    model.eval()
    with torch.no_grad():
        logits = model(X_t).reshape(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y_t)
        accuracy = ((logits > 0).float() == y_t).float().mean()
    return float(accuracy), float(loss)


def get_parameters(model: nn.Module) -> list[np.ndarray]:
    """Copies of the parameters as float32 arrays, in ``named_parameters()`` order."""
    return [p.detach().cpu().numpy().astype(np.float32, copy=True) for _, p in model.named_parameters()]


def set_parameters(model: nn.Module, params: Sequence[np.ndarray]) -> None:
    """Load ``params`` (as from ``get_parameters``) into ``model``; refuse wrong count, shape, dtype, NaN/Inf."""
    named = list(model.named_parameters())
    if len(params) != len(named):
        raise ValueError(f"expected {len(named)} parameter arrays ({', '.join(n for n, _ in named)}), got "
                         f"{len(params)} (fix: send get_parameters() of the same model)")
    arrays = [np.asarray(a) for a in params]
    for index, ((name, param), array) in enumerate(zip(named, arrays, strict=True)):
        expected_shape = tuple(param.shape)
        if array.shape != expected_shape or array.dtype != np.float32:
            raise ValueError(
                f"layer {index} ({name}): expected shape {expected_shape} dtype float32, got shape "
                f"{array.shape} dtype {array.dtype} (fix: send get_parameters() of the same model)"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"layer {index} ({name}): expected finite values, got NaN or Inf "
                             "(fix: training diverged; lower the learning rate)")
    with torch.no_grad():
        for (_, param), array in zip(named, arrays, strict=True):
            param.copy_(torch.from_numpy(array))


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(model.pt, model.json)`` for a ``.pt`` file path or a directory (which then holds ``model.pt``)."""
    path = Path(path)
    weights = path if path.suffix == ".pt" else path / MODEL_FILE
    return weights, weights.with_suffix(".json")


def save_model(
    model: nn.Linear, path: str | Path, *, selection: FeatureSelection, metrics: Mapping[str, float]
) -> tuple[Path, Path]:
    """Write the state dict to ``model.pt`` and the selection, ``n_features`` and final metrics to ``model.json``."""
    n_features = int(model.weight.shape[1])
    if n_features != len(selection.features):
        raise ValueError(f"expected a model over the {len(selection.features)} selected features, got "
                         f"n_features={n_features} (fix: build_model(len(selection.features), ...))")
    weights, card = model_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    document = {**selection.model_dump(), "n_features": n_features,
                "metrics": {str(k): float(v) for k, v in metrics.items()}}
    card.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return weights, card


def load_model(path: str | Path) -> tuple[nn.Linear, FeatureSelection]:
    """Read ``model.pt`` and the ``model.json`` next to it; return the model (eval mode) and its selection."""
    weights, card = model_paths(path)
    for needed in (weights, card):
        if not needed.is_file():
            raise FileNotFoundError(f"expected {needed} (written by save_model), found none "
                                    "(fix: pass the model.pt of a finished run)")
    document = json.loads(card.read_text(encoding="utf-8"))
    selection = FeatureSelection.model_validate({k: document.get(k) for k in FeatureSelection.model_fields})
    n_features = int(document["n_features"])
    if n_features != len(selection.features):
        raise ValueError(f"{card}: expected n_features == {len(selection.features)} (the number of "
                         f"features), got {n_features} (fix: rewrite it with save_model())")
    model = build_model(n_features, seed=0)
    state = torch.load(weights, weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, selection
