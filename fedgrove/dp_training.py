"""Record-level differential privacy: DP-SGD inside a site's local training, through Opacus.

Why this module exists: to protect each record, every record's gradient is clipped to `dp.clip_norm` and
Gaussian noise of `dp.noise_multiplier * dp.clip_norm` is added to every batch's sum, with batches drawn by
Poisson sampling (each record in a batch with probability batch_size / records), the sampling Opacus's RDP
accountant assumes (`fedgrove.dp_accounting`). Opacus's `GradSampleModule` computes the per-record gradients
and its `DPOptimizer` clips and adds the noise. The noise and the sampling draw from the operating system's
entropy, never from the spec's public seed: a DP run is not reproducible, by design. Importing Opacus and
`torch.optim` costs ~3 s and ~34 MB per process, so only a record-level DP run does.
"""

from __future__ import annotations

import math
import secrets
import warnings

import numpy as np
import torch
from torch import nn

from fedgrove.spec import DpSpec, TrainSpec


def train_local_dp(model: nn.Module, X: np.ndarray, y: np.ndarray, *, task: str, train: TrainSpec, dp: DpSpec,
                   loss: object) -> None:
    """`train.local_epochs * ceil(records / batch_size)` DP-SGD steps in place on `model`."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from fedgrove.model import _GLOBAL_RNG, seed_cpu_generator, to_tensor

    records = len(X)
    batch = min(train.batch_size, records)
    X_t, y_t = to_tensor(X), to_tensor(y).reshape(-1)
    sampled = GradSampleModule(model)
    base = torch.optim.SGD(sampled.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    optimizer = DPOptimizer(base, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.clip_norm,
                            expected_batch_size=batch)
    rng = np.random.default_rng()  # the operating system's entropy
    sampled.train()
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Opacus hooks every layer; torch says so when the inputs need no gradient, which they never do here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        seed_cpu_generator(secrets.randbits(62))
        for _ in range(train.local_epochs * math.ceil(records / batch)):
            chosen = torch.from_numpy(np.flatnonzero(rng.random(records) < batch / records))
            optimizer.zero_grad(set_to_none=True)
            if len(chosen):
                loss(task, sampled(X_t[chosen]), y_t[chosen]).backward()  # type: ignore[operator]
            else:
                for parameter in sampled.parameters():
                    parameter.grad_sample = torch.zeros(0, *parameter.shape)
            optimizer.step()
    sampled._close()
