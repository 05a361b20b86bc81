"""Privacy accounting: ε at δ for the sampled Gaussian mechanism, from Opacus's RDP accountant.

Why this module exists: a run must report how much privacy it has spent, round by round, and stop before
it spends more than its budget. The figure comes from a well-kept library, never from a formula written
here: Opacus's `opacus.accountants.analysis.rdp` (`compute_rdp`, then `get_privacy_spent`, which converts
RDP to (ε, δ) with Balle et al. 2020), over the orders Opacus's `RDPAccountant` uses by default, so record-
level figures match what Opacus's own `PrivacyEngine` reports.

- Site level: every site takes part in every round (sample rate 1), one release per round: steps = rounds.
- Record level (DP-SGD): sample rate = batch size / records, steps = batches per round × rounds.

Import cost: `import opacus` runs its package `__init__`, which loads torch, torch.distributed, sympy and much
of scipy (measured: +2.8 s and +1,384 modules on top of torch, 2,519 in all). The analysis file itself needs
only numpy and scipy.special, so it is loaded by its path inside the installed opacus package, without the
package `__init__`; if opacus is already imported, its own module is used.

When the best order is the smallest or largest one, Opacus warns that more orders would tighten the bound;
ε is then still a valid upper bound, only looser, and the warning is not passed on.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from types import ModuleType

# Opacus's RDPAccountant.DEFAULT_ALPHAS (a test checks they are the same).
ORDERS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
_ANALYSIS = "opacus.accountants.analysis.rdp"
_rdp: ModuleType | None = None


def _analysis() -> ModuleType:
    """Opacus's RDP analysis module, loaded on first use without importing the opacus package."""
    global _rdp
    if _rdp is None:
        if _ANALYSIS in sys.modules:
            _rdp = sys.modules[_ANALYSIS]
        else:
            package = importlib.util.find_spec("opacus")  # finds the package without importing it
            if package is None or not package.submodule_search_locations:
                raise ImportError("expected the opacus package to be installed, got none (fix: pip install "
                                  "opacus==1.6.0, or install fedgrove with its dependencies)")
            path = f"{list(package.submodule_search_locations)[0]}/accountants/analysis/rdp.py"
            spec = importlib.util.spec_from_file_location("fedgrove._opacus_rdp", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"expected Opacus's RDP analysis at {path}, got nothing there (fix: pip install "
                                  "opacus==1.6.0)")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _rdp = module
    return _rdp


def _check_common(noise_multiplier: float, sample_rate: float, delta: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"expected noise_multiplier > 0, got {noise_multiplier!r} (fix: set dp.noise_multiplier to "
                         "a positive number, e.g. 1.0; larger is more private)")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"expected a sample rate in (0, 1], got {sample_rate!r} (fix: site level samples every site, "
                         "1.0; record level samples batch size / records)")
    if not 0 < delta < 1:
        raise ValueError(f"expected delta in (0, 1), got {delta!r} (fix: set dp.delta below 1 / the number of "
                         "records, e.g. 1e-5)")


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at `delta` after `steps` releases of the sampled Gaussian mechanism (noise std = multiplier × clip)."""
    _check_common(noise_multiplier, sample_rate, delta)
    if steps < 1:
        raise ValueError(f"expected at least 1 step, got {steps!r} (fix: account for the rounds that ran)")
    rdp = _analysis()
    orders = ORDERS
    spent = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
        eps, _ = rdp.get_privacy_spent(orders=orders, rdp=spent, delta=delta)
    return float(eps)


def rounds_within_budget(noise_multiplier: float, sample_rate: float, delta: float, target_epsilon: float, *,
                         steps_per_round: int, max_rounds: int) -> int:
    """The largest number of rounds, at most `max_rounds`, whose ε stays ≤ `target_epsilon` (0 if the first
    round would already pass it). ε grows with the rounds, so this is a bisection over `epsilon`."""
    _check_common(noise_multiplier, sample_rate, delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"expected target_epsilon > 0, got {target_epsilon!r} (fix: set dp.target_epsilon, e.g. 8.0)")
    if steps_per_round < 1 or max_rounds < 0:
        raise ValueError(f"expected steps_per_round >= 1 and max_rounds >= 0, got {steps_per_round!r} and "
                         f"{max_rounds!r} (fix: site level takes one step per round)")
    low, high = 0, max_rounds  # invariant: `low` rounds fit (0 always does); more than `high` do not matter
    while low < high:
        middle = (low + high + 1) // 2
        if epsilon(noise_multiplier, sample_rate, middle * steps_per_round, delta) <= target_epsilon:
            low = middle
        else:
            high = middle - 1
    return low


def site_level_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε of site-level DP after `rounds` rounds: every site every round, one release per round."""
    return epsilon(noise_multiplier, 1.0, rounds, delta)


def record_sample_rate(batch_size: int, records: int) -> float:
    """DP-SGD's sample rate at one site: the chance that a record is in a given batch."""
    if not 1 <= batch_size <= records:
        raise ValueError(f"expected 1 <= batch size <= records, got batch size {batch_size} and {records} records "
                         "(fix: use a batch smaller than the site's data)")
    return batch_size / records


def record_level_epsilon(noise_multiplier: float, *, batch_size: int, records: int, batches_per_round: int,
                         rounds: int, delta: float) -> float:
    """ε of record-level DP (DP-SGD) at one site after `rounds` rounds of `batches_per_round` batches."""
    return epsilon(noise_multiplier, record_sample_rate(batch_size, records), batches_per_round * rounds, delta)
