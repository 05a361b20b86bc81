"""The tests' own FedAvg, written apart from the server's and the simulation's code: a plain float64 numpy
sum(w·x) / sum(w), so an arithmetic bug in `fedgrove_common.fedavg` cannot pass as the expected value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def weighted_mean_float64(contributions: Sequence[tuple[float, Sequence[np.ndarray]]]) -> list[np.ndarray]:
    """(weighting, layers) pairs → the weighted mean of each layer, computed in float64, in the layers' dtype."""
    total = math.fsum(weighting for weighting, _ in contributions)
    means = []
    for index, first in enumerate(contributions[0][1]):
        stacked = np.stack([layers[index].astype(np.float64) * weighting for weighting, layers in contributions])
        means.append((stacked.sum(axis=0) / total).astype(first.dtype))
    return means
