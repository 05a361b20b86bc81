"""The model a federation trains: built from the spec, trained locally, exchanged as arrays.

Why this module exists: the leaves, the in-memory simulation and the baselines must share one definition of
"the model", one training loop and one parameter exchange format, so results are comparable and
reproducible. The exchange format is the module's `state_dict()` in order, parameters and buffers, as
float32 arrays: the protocol's `layer_0` ... `layer_n`. BatchNorm's running statistics are averaged like
weights; an integer buffer (`num_batches_tracked`) is averaged too and rounded to the nearest integer.

The kinds (`fedgrove.spec.ModelSpec`): `logistic` and `linear` are one `nn.Linear`; `mlp` is Linear layers with
ReLU or tanh and dropout between them; `python` is the user's own module from `builder(n_inputs, n_outputs,
**options)`, imported at each site. Every kind is initialised from the spec's seed without touching torch's
global random state, so every site starts from the same parameters.

Training runs on one intra-op thread: a logistic-regression step was measured at ~0.65 ms with one thread
and ~4.9 ms with two on this kind of 2-core machine. The optimizer steps are written out (SGD, and Adam as
`torch.optim.Adam` computes it) because creating a `torch.optim` optimizer imports torch's compiler stack
(~320 modules, ~34 MB per process). Dropout draws from a generator seeded by (seed, epoch), so a site, a
retry and the simulation draw the same masks.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedgrove.spec import ModelSpec, TrainSpec

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# torch's global random state is the one dropout (and a user's builder) draws from; leaves running in threads
# of one process take turns with it, so each draws from the state its own seed set.
_GLOBAL_RNG = threading.Lock()


class ModelBuildError(ValueError):
    """The spec's model cannot be built here; the message names the builder and what was expected."""


@functools.cache
def use_single_thread() -> None:
    """Set torch to one intra-op thread (once per process); small models are several times faster so."""
    torch.set_num_threads(1)


def outputs_for(task: str, classes: int) -> int:
    """The model's output width: one logit (binary), one per class (multiclass), one value (regression)."""
    return classes if task == "multiclass" else 1


class _LinearWithoutDefaultInit(nn.Linear):
    """`nn.Linear` whose constructor leaves the parameters uninitialised, for `build_model` to fill from its seed
    (the default init draws from torch's global RNG; `torch.nn.utils.skip_init` builds on the meta device,
    which imports sympy: ~480 modules, ~37 MB)."""

    def reset_parameters(self) -> None:
        pass


def _seeded_linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    layer = _LinearWithoutDefaultInit(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def build_model(n_inputs: int, n_outputs: int = 1, *, seed: int, spec: ModelSpec | None = None) -> nn.Module:
    """The spec's model, initialised from `seed` (torch's global random state untouched)."""
    if n_inputs < 1:
        raise ValueError(f"expected n_inputs >= 1, got {n_inputs}")
    spec = spec or ModelSpec()
    return copy.deepcopy(_template(n_inputs, n_outputs, seed, spec.model_dump_json()))


@functools.lru_cache(maxsize=32)
def _template(n_inputs: int, n_outputs: int, seed: int, spec_json: str) -> nn.Module:
    use_single_thread()
    spec = ModelSpec.model_validate_json(spec_json)
    generator = torch.Generator().manual_seed(seed)
    if spec.kind in ("logistic", "linear"):
        return _seeded_linear(n_inputs, n_outputs, generator)
    if spec.kind == "mlp":
        layers: list[nn.Module] = []
        width = n_inputs
        for hidden in spec.hidden:
            layers += [_seeded_linear(width, hidden, generator), nn.ReLU() if spec.activation == "relu" else nn.Tanh()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = hidden
        layers.append(_seeded_linear(width, n_outputs, generator))
        return nn.Sequential(*layers)
    return _user_module(spec, n_inputs, n_outputs, seed)


def _user_module(spec: ModelSpec, n_inputs: int, n_outputs: int, seed: int) -> nn.Module:
    builder = spec.builder or ""
    module_name, _, function_name = builder.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ModelBuildError(f"model builder {builder!r} cannot be imported at this site: {type(exc).__name__}: "
                              f"{exc} (fix: install the package that holds it in this site's environment, or "
                              "correct builder)") from None
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = function(n_inputs, n_outputs, **spec.options)
        except Exception as exc:
            raise ModelBuildError(f"model builder {builder!r} raised {type(exc).__name__}: {exc} (called with "
                                  f"n_inputs={n_inputs}, n_outputs={n_outputs}, options {spec.options})") from None
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"model builder {builder!r} returned {type(model).__name__}, expected a "
                              "torch.nn.Module")
    model.eval()
    with torch.no_grad():
        try:
            shape = tuple(model(torch.zeros(2, n_inputs)).shape)
        except Exception as exc:
            raise ModelBuildError(f"model builder {builder!r}: its module fails on inputs of shape (2, {n_inputs}): "
                                  f"{type(exc).__name__}: {exc}") from None
    if shape != (2, n_outputs):
        raise ModelBuildError(f"model builder {builder!r}: its module's output for 2 records has shape {shape}, "
                              f"expected (2, {n_outputs}) (fix: end the module with {n_outputs} output"
                              f"{'s' if n_outputs != 1 else ''}; it gets n_outputs={n_outputs})")
    return model


def seed_cpu_generator(seed: int) -> None:
    """Seed the CPU generator that dropout draws from. Not `torch.manual_seed`: that also queues the seed for
    CUDA, and with CUDA not initialised it formats the caller's whole stack to do so (~0.9 ms under a Prefect
    task, at every fit). Training here runs on the CPU."""
    torch.random.default_generator.manual_seed(seed)


def signature(model: nn.Module) -> list[tuple[str, list[int], str]]:
    """Each state entry's name, shape and dtype: what every site's model must share."""
    return [(name, list(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in model.state_dict().items()]


def to_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor; arrays are copied (pandas 3 hands out read-only arrays, which torch cannot share)."""
    if isinstance(values, torch.Tensor):
        return values.to(torch.float32)
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))


@dataclass
class OptimizerState:
    """Adam's moments and step count, kept at the site from round to round (None for SGD)."""

    step: int = 0
    first: list[torch.Tensor] = field(default_factory=list)
    second: list[torch.Tensor] = field(default_factory=list)


def task_loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "multiclass":
        return nn.functional.cross_entropy(output, target.long())
    if task == "regression":
        return nn.functional.mse_loss(output.reshape(-1), target)
    return nn.functional.binary_cross_entropy_with_logits(output.reshape(-1), target)


def train_local(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    task: str,
    train: TrainSpec,
    seed: int,
    epoch: int,
    state: OptimizerState | None = None,
    anchor: Sequence[torch.Tensor] | None = None,
) -> OptimizerState | None:
    """Train `train.local_epochs` passes in place; shuffles and dropout are seeded by (seed, epoch). Returns
    the optimizer's state to keep for the next round (the `state` given is left as it was, so a retry starts
    from the same place). `anchor`: the round's global parameters (FedProx)."""
    use_single_thread()
    X_t, y_t = to_tensor(X), to_tensor(y).reshape(-1)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adam":
        state = copy.deepcopy(state) if state is not None else OptimizerState(
            first=[torch.zeros_like(p) for p in parameters], second=[torch.zeros_like(p) for p in parameters])
    skip_singletons = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model.train()
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        seed_cpu_generator(int(np.random.default_rng([seed, epoch]).integers(2**62)))
        for local_epoch in range(train.local_epochs):
            order = np.random.default_rng([seed, epoch, local_epoch]).permutation(len(X_t))
            for start in range(0, len(order), train.batch_size):
                batch = torch.from_numpy(order[start : start + train.batch_size])
                if skip_singletons and len(batch) == 1:
                    continue  # BatchNorm cannot train on one record
                for parameter in parameters:
                    parameter.grad = None
                task_loss(task, model(X_t[batch]), y_t[batch]).backward()
                _step(parameters, train, state, anchor)
    return state


def _step(parameters: list[torch.Tensor], train: TrainSpec, state: OptimizerState | None,
          anchor: Sequence[torch.Tensor] | None) -> None:
    """One optimizer step: SGD (`p -= lr * g`) or Adam, on g = grad + weight_decay * p + mu * (p - anchor)."""
    with torch.no_grad():
        if state is not None:
            state.step += 1
        for index, parameter in enumerate(parameters):
            if parameter.grad is None:
                continue
            grad = parameter.grad
            if train.weight_decay:
                grad = grad.add(parameter, alpha=train.weight_decay)
            if train.proximal_mu and anchor is not None:
                grad = grad.add(parameter - anchor[index], alpha=train.proximal_mu)
            if state is None:
                parameter.add_(grad, alpha=-train.learning_rate)
                continue
            beta1, beta2 = ADAM_BETAS
            first, second = state.first[index], state.second[index]
            first.lerp_(grad, 1 - beta1)
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            correction1, correction2 = 1 - beta1 ** state.step, 1 - beta2 ** state.step
            denominator = (second.sqrt() / math.sqrt(correction2)).add_(ADAM_EPS)
            parameter.addcdiv_(first, denominator, value=-train.learning_rate / correction1)


def outputs(model: nn.Module, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """The model's outputs per record (float64, shape (n, outputs)), in evaluation mode."""
    use_single_thread()
    model.eval()
    with torch.no_grad():
        result = model(to_tensor(X))
    if result.dim() == 1:
        result = result.unsqueeze(1)
    return result.flatten(1).numpy().astype(np.float64)  # (0, outputs) for no records: a site's empty test part


def logits(model: nn.Module, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """A one-output model's value per record (float64, shape (n,))."""
    return outputs(model, X).reshape(-1)


def get_parameters(model: nn.Module) -> list[np.ndarray]:
    """Copies of the state (parameters and buffers) as float32 arrays, in `state_dict()` order."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def trainable(model: nn.Module) -> list[torch.Tensor]:
    """Copies of the trainable parameters, the FedProx anchor of a round."""
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def set_parameters(model: nn.Module, params: Sequence[np.ndarray]) -> None:
    """Load `params` (as from `get_parameters`) into `model`; refuse wrong count, shape, dtype, NaN/Inf."""
    named = list(model.state_dict().items())
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
            value = np.asarray(np.rint(array) if not tensor.is_floating_point() else array)
            tensor.copy_(torch.from_numpy(value))
