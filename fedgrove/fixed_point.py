"""Fixed-point numbers whose sum survives a BranchKey server's float64 mean exactly.

Why this module exists: secure aggregation adds masks modulo 2^L, which only cancel if the server's sum of
the masked integers is exact. A BranchKey server knows nothing of integers: it computes, in float64,
`mean = sum(v_i * weighting_i) / sum(weighting_i)` and returns the mean in the dtype the sites uploaded.
So every site uploads float64 layers holding integers with protocol weighting 1.0, and the sums are read
back from the mean. This module fixes the bits so that this is exact, and encodes values into such limbs.

Parameters for N sites (2 <= N <= `MAX_SITES`), with h = ceil(log2 N):
- modulus 2^L with L = 51 - h, so N * 2^L <= 2^51: each upload is an integer in [0, 2^L);
- payload P = L - h bits per limb, so the sum of N limbs below 2^P stays below 2^L and never wraps;
- F = 40 fraction bits: a value x is the integer X = round(x * 2^F) (resolution 2^-40 ~ 9.1e-13), split into
  two limbs X = hi * 2^P + lo with lo in [0, 2^P) and hi in [-2^(P-1), 2^(P-1)) stored modulo 2^L. A value
  must satisfy |X| < 2^(2P-1), i.e. |x| < 2^(2P-1-F): 1.4e17 for 2 sites, 5.6e14 for 5-8, 2.2e12 for 17-32,
  5.4e8 for 129-256. Values outside are refused, never wrapped.

Exactness of the server's mean (S = the exact sum of one position's N uploads):
1. Every upload is an integer below 2^L <= 2^50, exact in float64, and stays exact times weighting 1.0.
2. Every partial sum, in any order, is an integer at most N * (2^L - 1) < 2^51 < 2^53: exact. The total
   weighting N * 1.0 is exact. The one rounding is the division: S/N < 2^L, so the mean is within half an
   ulp below 2^L, 2^(L-54), of S/N; times N that is at most N * 2^(L-54) <= 2^51 * 2^-54 = 1/8.
3. The decoder computes p = fl(mean * N); mean * N < 2^51, so this rounding adds at most 2^(50-53) = 1/8.
So |p - S| <= 1/4 and round(p) = S exactly. `limb_sums` refuses a mean further than 1/4 from a whole number:
the server did something else (another weighting, another number of uploads).
(L = 48 with 256 sites, N * 2^L = 2^56, would not work: partial sums above 2^53 are rounded by the server.)
Limb sums are then exact modulo 2^L; decoding `hi * 2^(P-F) + lo * 2^-F` rounds once (relative 2^-53).
So a decoded sum of N values is within N * 2^-41 + 2^-53 * sum|x| of the true sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedgrove.secagg_errors import SecureAggregationError

EXACT_SUM_BITS = 51  # N * 2^L <= 2^51: the server's float64 sums are exact and the decode error is at most 1/4
FRACTION_BITS = 40
MAX_SITES = 256
_WHOLE_NUMBER_TOLERANCE = 0.25


@dataclass(frozen=True)
class FixedPoint:
    """The encoding's parameters for one federation size (see the module docstring)."""

    sites: int
    modulus_bits: int  # L: every upload is an integer in [0, 2^L)
    payload_bits: int  # P: each limb of one site is below 2^P in magnitude
    fraction_bits: int = FRACTION_BITS

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.modulus_bits) - 1)

    @property
    def limit(self) -> float:
        """Values must be strictly smaller than this in magnitude."""
        return math.ldexp(1.0, 2 * self.payload_bits - 1 - self.fraction_bits)


def fixed_point_for(sites: int) -> FixedPoint:
    """The parameters for `sites` sites: L = 51 - ceil(log2 N), P = L - ceil(log2 N)."""
    if not 2 <= sites <= MAX_SITES:
        raise SecureAggregationError(
            f"expected between 2 and {MAX_SITES} sites for secure aggregation, got {sites} (fix: with one site there "
            f"is nothing to hide it among; beyond {MAX_SITES} the fixed-point range becomes too small)")
    headroom = (sites - 1).bit_length()  # ceil(log2 sites)
    modulus_bits = EXACT_SUM_BITS - headroom
    return FixedPoint(sites=sites, modulus_bits=modulus_bits, payload_bits=modulus_bits - headroom)


def encode(values: np.ndarray, encoding: FixedPoint, *, what: str) -> np.ndarray:
    """Two limbs per value, shape (2, *values.shape), uint64 in [0, 2^L): hi then lo. `what` names the
    values in the error refusing one out of range (or not finite)."""
    values = np.asarray(values, dtype=np.float64)
    payload = float(1 << encoding.payload_bits)
    with np.errstate(over="ignore", invalid="ignore"):
        whole = np.rint(np.ldexp(values, encoding.fraction_bits))
        outside = ~(np.abs(whole) < math.ldexp(1.0, 2 * encoding.payload_bits - 1))
    if outside.any():
        worst = values.reshape(-1)[int(np.flatnonzero(outside.reshape(-1))[0])]
        raise SecureAggregationError(
            f"expected {what} within ±{encoding.limit:.6g} for secure aggregation among {encoding.sites} sites, got "
            f"{worst:.6g} (fix: scale every site's weighting down by the same factor, which leaves the weighted mean "
            "unchanged, or look for a diverging model)")
    high = np.floor(whole / payload)
    low = whole - high * payload  # exact: an integer in [0, 2^P), on the grid of `whole`'s ulp
    limbs = np.empty((2, *values.shape), dtype=np.uint64)
    limbs[0] = high.astype(np.int64).astype(np.uint64) & encoding.mask  # two's complement, then modulo 2^L
    limbs[1] = low.astype(np.uint64)
    return limbs


def decode(limb_sums: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """The sum of the encoded values, float64 of shape limb_sums.shape[1:], from limb sums modulo 2^L."""
    half = np.uint64(1 << (encoding.modulus_bits - 1))
    high = limb_sums[0].astype(np.int64)
    high = np.where(limb_sums[0] >= half, high - (1 << encoding.modulus_bits), high)  # signed sum of hi limbs
    low = limb_sums[1].astype(np.int64)  # the sum of lo limbs is below N * 2^P <= 2^L: never wrapped
    return (np.ldexp(high.astype(np.float64), encoding.payload_bits - encoding.fraction_bits)
            + np.ldexp(low.astype(np.float64), -encoding.fraction_bits))


def limb_sums(mean: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """The exact sums modulo 2^L, uint64, of the integers the sites uploaded, from the server's float64 mean."""
    scaled = np.asarray(mean, dtype=np.float64) * encoding.sites
    whole = np.rint(scaled)
    ceiling = float(encoding.sites << encoding.modulus_bits)
    with np.errstate(invalid="ignore"):
        bad = ~((np.abs(scaled - whole) <= _WHOLE_NUMBER_TOLERANCE) & (whole >= 0) & (whole < ceiling))
    if bad.any():
        index = int(np.flatnonzero(bad.reshape(-1))[0])
        got = float(scaled.reshape(-1)[index])
        raise SecureAggregationError(
            f"expected the server's mean × {encoding.sites} to be whole numbers in [0, {encoding.sites} × "
            f"2^{encoding.modulus_bits}), got {got!r} (fix: every site must upload its masked float64 layers with "
            f"weighting 1.0, and the aggregation must combine exactly {encoding.sites} uploads)")
    return whole.astype(np.uint64) & encoding.mask
