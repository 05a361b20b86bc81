"""Site-level differential privacy at a site: clip the round's update, add Gaussian noise.

Why this module exists: the privacy accountant (`fedgrove.dp_accounting`) is only right if each site's
update has L2 norm at most C (`clip_update`, over all layers together) and carries Gaussian noise of the
standard deviation it assumes (`noise_std`, `gaussian_noise`):
- without secure aggregation (local DP) the server sees each update, so each site adds σ·C;
- with secure aggregation (distributed DP) the server sees only the sum, so each of n sites adds σ·C/√n and
  the sum carries σ·C. This assumes every site is honest about its noise: a site that adds less weakens
  everyone's guarantee, and no one can tell from the sum.
The caller passes the numpy Generator: a fresh `np.random.default_rng()` (seeded from the operating system) in
production, a seeded one in tests. Its PCG64 stream is not cryptographic: against an adversary who could
predict the generator's state, the noise would not protect (Opacus's `secure_mode` addresses this for DP-SGD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_MAX_SHRINKS = 60


def _check_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"expected clip_norm > 0, got {clip_norm!r} (fix: set dp.clip_norm to a positive number, "
                         "e.g. 1.0, near the typical norm of a round's update)")


def global_norm(layers: Sequence[np.ndarray]) -> float:
    """The L2 norm of all layers taken together, in float64."""
    return math.sqrt(sum(float(np.dot(flat, flat)) for flat in
                         (np.asarray(layer, dtype=np.float64).reshape(-1) for layer in layers)))


def clip_update(update: Sequence[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], float]:
    """The update scaled to L2 norm at most `clip_norm` (unchanged if already within), and its norm before.

    Scaling by clip_norm / norm and rounding back to the layers' dtype can land a hair above clip_norm, so the
    factor shrinks (by 2^-20 at a time) until the norm of what is returned is within clip_norm."""
    _check_clip_norm(clip_norm)
    norm = global_norm(update)
    if not math.isfinite(norm):
        raise ValueError(f"expected a finite update, got one of norm {norm} (fix: look for a diverging model or a "
                         "learning rate too large)")
    if norm <= clip_norm:
        return [np.array(layer, copy=True) for layer in update], norm
    factor = clip_norm / norm
    for _ in range(_MAX_SHRINKS):
        clipped = [(np.asarray(layer, dtype=np.float64) * factor).astype(np.asarray(layer).dtype) for layer in update]
        if global_norm(clipped) <= clip_norm:
            return clipped, norm
        factor *= 1 - 2.0**-20
    raise AssertionError(f"clipping to {clip_norm} did not converge")  # unreachable for float dtypes


def noise_std(noise_multiplier: float, clip_norm: float, *, sites: int, secure_aggregation: bool) -> float:
    """The noise standard deviation one site adds: σ·C alone (local DP), σ·C/√n under secure aggregation."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"expected noise_multiplier > 0, got {noise_multiplier!r} (fix: set dp.noise_multiplier to "
                         "a positive number, e.g. 1.0; larger is more private)")
    _check_clip_norm(clip_norm)
    if sites < 1:
        raise ValueError(f"expected at least 1 site, got {sites} (fix: count the sites of the run)")
    std = noise_multiplier * clip_norm
    return std / math.sqrt(sites) if secure_aggregation else std


def gaussian_noise(shapes: Sequence[tuple[int, ...]], std: float, generator: np.random.Generator) -> list[np.ndarray]:
    """Independent N(0, std²) float64 noise, one array per shape."""
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"expected a noise standard deviation > 0, got {std!r} (fix: compute it with noise_std)")
    return [generator.normal(0.0, std, size=shape) for shape in shapes]
