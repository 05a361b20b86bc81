"""Builders `(n_inputs, n_outputs, **options) -> torch.nn.Module`, imported at each site by `fedgrove`."""

from __future__ import annotations

from torch import nn


def batchnorm_net(n_inputs: int, n_outputs: int, *, width: int = 16) -> nn.Module:
    """A small network with a BatchNorm layer: running statistics and an integer buffer to federate."""
    return nn.Sequential(nn.Linear(n_inputs, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, n_outputs))


def wrong_width(n_inputs: int, n_outputs: int) -> nn.Module:
    """Ignores n_outputs: always three outputs."""
    return nn.Linear(n_inputs, 3)


def refuses(n_inputs: int, n_outputs: int, **options: object) -> nn.Module:
    raise ValueError("this builder needs option depth")


def not_a_module(n_inputs: int, n_outputs: int) -> object:
    return [n_inputs, n_outputs]
