"""The model a federation trains: built from the spec, trained locally, exchanged as arrays, saved with its card.

Why this module exists: the leaves, the in-memory simulation and the baselines must share one definition of
"the model", one training loop and one parameter exchange format (float32 arrays in ``state_dict()``
order, the protocol's ``layer_0`` ... ``layer_n``), so results are comparable and reproducible.

Training runs on one intra-op thread: a logistic-regression step was measured at ~0.65 ms with one thread
and ~4.9 ms with two on this kind of 2-core machine; manual batching is another ~2x faster than a
DataLoader. The SGD step is written out (``p -= lr * grad``, what ``torch.optim.SGD`` does without momentum)
because creating a ``torch.optim`` optimizer imports torch's compiler stack (~320 modules, ~34 MB per process).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedgrove.spec import ModelSpec, TrainSpec


@functools.cache
def use_single_thread() -> None:
    """Set torch to one intra-op thread (once per process); small models are several times faster so."""
    torch.set_num_threads(1)


class _LinearWithoutDefaultInit(nn.Linear):
    """``nn.Linear`` whose constructor leaves the parameters uninitialised, for ``build_model`` to fill from its
    seed. The default init draws from torch's global RNG; ``torch.nn.utils.skip_init`` builds on the meta
    device, which imports sympy (~480 modules, ~37 MB of RSS in every process that builds a model)."""

    def reset_parameters(self) -> None:
        pass


def build_model(n_inputs: int, *, seed: int, spec: ModelSpec | None = None) -> nn.Module:
    """The spec's model over ``n_inputs`` features, initialised like torch's default from ``seed`` (the global
    RNG untouched). ``logistic``: ``nn.Linear(n_inputs, 1)``, one logit."""
    if n_inputs < 1:
        raise ValueError(f"expected n_inputs >= 1, got {n_inputs}")
    del spec  # one kind so far: logistic
    use_single_thread()
    model = _LinearWithoutDefaultInit(n_inputs, 1)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(n_inputs)
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
    train: TrainSpec,
    seed: int,
    epoch: int,
) -> None:
    """Train ``train.local_epochs`` passes of minibatch SGD in place; shuffles are seeded by (seed, epoch)."""
    use_single_thread()
    X_t, y_t = _as_tensors(X, y)
    parameters = list(model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for local_epoch in range(train.local_epochs):
        order = np.random.default_rng([seed, epoch, local_epoch]).permutation(len(X_t))
        for start in range(0, len(order), train.batch_size):
            batch = torch.from_numpy(order[start : start + train.batch_size])
            for parameter in parameters:
                parameter.grad = None
            loss = loss_fn(model(X_t[batch]).reshape(-1), y_t[batch])
            loss.backward()
            sgd_step(parameters, train.learning_rate)


def sgd_step(parameters: Sequence[torch.Tensor], learning_rate: float) -> None:
    """One plain SGD step, ``p -= learning_rate * p.grad``: the update ``torch.optim.SGD`` makes without momentum
    or weight decay."""
    with torch.no_grad():
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=-learning_rate)


def logits(model: nn.Module, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """The model's logit per record (float64)."""
    use_single_thread()
    X_t = to_tensor(X)
    model.eval()
    with torch.no_grad():
        return model(X_t).reshape(-1).numpy().astype(np.float64)


def get_parameters(model: nn.Module) -> list[np.ndarray]:
    """Copies of the state (parameters and buffers) as float32 arrays, in ``state_dict()`` order."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def set_parameters(model: nn.Module, params: Sequence[np.ndarray]) -> None:
    """Load ``params`` (as from ``get_parameters``) into ``model``; refuse wrong count, shape, dtype, NaN/Inf."""
    state = model.state_dict()
    named = list(state.items())
    if len(params) != len(named):
        raise ValueError(f"expected {len(named)} parameter arrays ({', '.join(n for n, _ in named)}), got "
                         f"{len(params)} (fix: send get_parameters() of the same model)")
    arrays = [np.asarray(a) for a in params]
    for index, ((name, tensor), array) in enumerate(zip(named, arrays, strict=True)):
        expected_shape = tuple(tensor.shape)
        if array.shape != expected_shape or array.dtype != np.float32:
            raise ValueError(
                f"layer {index} ({name}): expected shape {expected_shape} dtype float32, got shape "
                f"{array.shape} dtype {array.dtype} (fix: send get_parameters() of the same model)"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"layer {index} ({name}): expected finite values, got NaN or Inf "
                             "(fix: training diverged; lower the learning rate)")
    with torch.no_grad():
        for (_, tensor), array in zip(named, arrays, strict=True):
            tensor.copy_(torch.from_numpy(array))
