"""Differential privacy maths: clipping within C exactly, noise of the standard deviation the accountant
assumes (checked against chi-square bounds), ε equal to Opacus's own figures, the rounds a budget allows,
the model check before DP-SGD, and every refusal's exact message. Oracles: exact rational norms, the
chi-square and normal distributions (scipy), and Opacus called directly through its public accountant."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fedgrove.dp_accounting import (
    ORDERS,
    epsilon,
    record_level_epsilon,
    record_sample_rate,
    rounds_within_budget,
    site_level_epsilon,
)
from fedgrove.dp_noise import clip_update, gaussian_noise, noise_std

DELTA = 1e-5
FAR = 1e-6  # each statistical check fails by chance with probability 2e-6


def exact_norm_squared(layers: list[np.ndarray]) -> Fraction:
    return sum((Fraction(float(v)) ** 2 for layer in layers for v in layer.reshape(-1)), Fraction(0))


def test_an_update_above_the_clip_norm_is_scaled_to_within_it_exactly() -> None:
    rng = np.random.default_rng(1)
    naive_overshoots = 0
    for _ in range(60):
        update = [rng.normal(size=(7, 9)).astype(np.float32), rng.normal(size=11).astype(np.float32)]
        clip_norm = float(rng.uniform(0.05, 2.0))
        norm = math.sqrt(exact_norm_squared(update))
        clipped, reported = clip_update(update, clip_norm)
        assert reported == pytest.approx(norm, rel=1e-12)
        assert exact_norm_squared(clipped) <= Fraction(clip_norm) ** 2
        assert math.sqrt(exact_norm_squared(clipped)) >= clip_norm * (1 - 1e-6)
        for original, scaled in zip(update, clipped, strict=True):
            assert scaled.dtype == np.float32
            np.testing.assert_allclose(scaled, original * (clip_norm / norm), rtol=1e-6, atol=1e-7)
        naive = [(layer * (clip_norm / norm)).astype(np.float32) for layer in update]
        naive_overshoots += exact_norm_squared(naive) > Fraction(clip_norm) ** 2
    assert naive_overshoots > 0  # rounding to float32 does overshoot: the case the shrinking exists for


def test_an_update_within_the_clip_norm_is_unchanged() -> None:
    update = [np.array([[0.3, -0.4]], dtype=np.float32), np.array([0.0, 1.2], dtype=np.float64)]
    clipped, norm = clip_update(update, 2.0)
    assert norm == pytest.approx(1.3, rel=1e-7)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(clipped, update, strict=True))
    assert clipped[0] is not update[0]


@pytest.mark.parametrize(("secure_aggregation", "sites", "expected"), [(False, 5, 2.4), (True, 5, 2.4 / math.sqrt(5)),
                                                                        (True, 1, 2.4)])
def test_the_noise_std_per_site_is_sigma_c_alone_and_sigma_c_over_root_n_with_secure_aggregation(
        secure_aggregation: bool, sites: int, expected: float) -> None:
    std = noise_std(1.6, 1.5, sites=sites, secure_aggregation=secure_aggregation)
    assert std == pytest.approx(expected, rel=1e-15)
    draws = 200_000
    noise = gaussian_noise([(400, 500), (100,)], std, np.random.default_rng(7))
    values = np.concatenate([layer.reshape(-1) for layer in noise])[:draws]
    # Sum of squares / std² is chi-square with `draws` degrees of freedom; the sum is normal with variance draws·std².
    statistic = float(np.sum(values**2)) / expected**2
    assert stats.chi2.ppf(FAR, draws) <= statistic <= stats.chi2.ppf(1 - FAR, draws)
    assert abs(float(np.sum(values))) <= stats.norm.ppf(1 - FAR / 2) * expected * math.sqrt(draws)


def test_the_noise_summed_over_n_sites_under_secure_aggregation_carries_sigma_c() -> None:
    sites, draws = 5, 100_000
    std = noise_std(1.0, 2.0, sites=sites, secure_aggregation=True)
    generator = np.random.default_rng(11)
    total = sum(gaussian_noise([(draws,)], std, generator)[0] for _ in range(sites))
    statistic = float(np.sum(total**2)) / (1.0 * 2.0) ** 2
    assert stats.chi2.ppf(FAR, draws) <= statistic <= stats.chi2.ppf(1 - FAR, draws)


def test_the_orders_are_opacus_rdp_accountants_defaults() -> None:
    from opacus.accountants import RDPAccountant

    assert ORDERS == RDPAccountant.DEFAULT_ALPHAS


@pytest.mark.parametrize(("noise_multiplier", "sample_rate", "steps"), [
    (1.0, 1.0, 10),  # site level: every site, one step a round, 10 rounds
    (2.0, 1.0, 50),
    (1.1, 64 / 6000, 30 * 94),  # record level: batches of 64 of 6,000 records, 94 batches a round, 30 rounds
    (0.8, 0.02, 500),
])
def test_epsilon_equals_opacus_own_figures(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    library = accountant.get_epsilon(delta=DELTA)
    orders = RDPAccountant.DEFAULT_ALPHAS
    direct, _ = rdp.get_privacy_spent(orders=orders, delta=DELTA, rdp=rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders))
    assert epsilon(noise_multiplier, sample_rate, steps, DELTA) == library == pytest.approx(float(direct), rel=1e-15)


def test_site_and_record_level_epsilon_use_their_sample_rates_and_steps() -> None:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(3 * 20):  # 3 rounds of 20 batches of 50 among 1,000 records
        accountant.step(noise_multiplier=1.3, sample_rate=0.05)
    assert record_level_epsilon(1.3, batch_size=50, records=1000, batches_per_round=20, rounds=3,
                                delta=DELTA) == accountant.get_epsilon(delta=DELTA)
    accountant = RDPAccountant()
    for _ in range(12):
        accountant.step(noise_multiplier=3.0, sample_rate=1.0)
    assert site_level_epsilon(3.0, 12, DELTA) == accountant.get_epsilon(delta=DELTA)


def test_epsilon_grows_with_every_round() -> None:
    for sample_rate, steps_per_round in [(1.0, 1), (0.01, 100)]:
        spent = [epsilon(1.2, sample_rate, rounds * steps_per_round, DELTA) for rounds in range(1, 26)]
        assert all(later > earlier for earlier, later in zip(spent, spent[1:]))


@pytest.mark.parametrize(("sample_rate", "steps_per_round", "target"), [
    (1.0, 1, 8.0), (1.0, 1, 12.0), (1.0, 1, 1e-3), (1.0, 1, 1e6), (0.01, 100, 0.5), (0.01, 100, 1.0),
])
def test_rounds_within_budget_is_the_last_round_whose_epsilon_stays_within_the_target(
        sample_rate: float, steps_per_round: int, target: float) -> None:
    max_rounds = 30
    spent = [epsilon(2.0, sample_rate, rounds * steps_per_round, DELTA) for rounds in range(1, max_rounds + 1)]
    expected = sum(1 for value in spent if value <= target)  # ε grows, so these are the first rounds
    assert rounds_within_budget(2.0, sample_rate, DELTA, target, steps_per_round=steps_per_round,
                                max_rounds=max_rounds) == expected
    assert 0 < expected < max_rounds or target in (1e-3, 1e6)


def test_importing_the_accountant_and_computing_epsilon_loads_neither_torch_nor_opacus() -> None:
    code = ("import sys; from fedgrove.dp_accounting import site_level_epsilon; site_level_epsilon(1.0, 5, 1e-5); "
            "print(sorted(m for m in ('torch', 'opacus', 'torch._dynamo', 'sympy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: epsilon(0.0, 1.0, 5, DELTA),
     "expected noise_multiplier > 0, got 0.0 (fix: set dp.noise_multiplier to a positive number, e.g. 1.0; larger is "
     "more private)"),
    (lambda: rounds_within_budget(-1.0, 1.0, DELTA, 8.0, steps_per_round=1, max_rounds=10),
     "expected noise_multiplier > 0, got -1.0 (fix: set dp.noise_multiplier to a positive number, e.g. 1.0; larger "
     "is more private)"),
    (lambda: noise_std(0.0, 1.0, sites=3, secure_aggregation=True),
     "expected noise_multiplier > 0, got 0.0 (fix: set dp.noise_multiplier to a positive number, e.g. 1.0; larger is "
     "more private)"),
    (lambda: noise_std(1.0, 0.0, sites=3, secure_aggregation=False),
     "expected clip_norm > 0, got 0.0 (fix: set dp.clip_norm to a positive number, e.g. 1.0, near the typical norm "
     "of a round's update)"),
    (lambda: clip_update([np.ones(3)], -1.0),
     "expected clip_norm > 0, got -1.0 (fix: set dp.clip_norm to a positive number, e.g. 1.0, near the typical norm "
     "of a round's update)"),
    (lambda: epsilon(1.0, 1.0, 5, 0.0),
     "expected delta in (0, 1), got 0.0 (fix: set dp.delta below 1 / the number of records, e.g. 1e-5)"),
    (lambda: epsilon(1.0, 1.0, 5, 1.0),
     "expected delta in (0, 1), got 1.0 (fix: set dp.delta below 1 / the number of records, e.g. 1e-5)"),
    (lambda: epsilon(1.0, 0.0, 5, DELTA),
     "expected a sample rate in (0, 1], got 0.0 (fix: site level samples every site, 1.0; record level samples batch "
     "size / records)"),
    (lambda: epsilon(1.0, 1.0, 0, DELTA),
     "expected at least 1 step, got 0 (fix: account for the rounds that ran)"),
    (lambda: rounds_within_budget(1.0, 1.0, DELTA, 0.0, steps_per_round=1, max_rounds=10),
     "expected target_epsilon > 0, got 0.0 (fix: set dp.target_epsilon, e.g. 8.0)"),
    (lambda: record_sample_rate(100, 50),
     "expected 1 <= batch size <= records, got batch size 100 and 50 records (fix: use a batch smaller than the "
     "site's data)"),
    (lambda: clip_update([np.array([1.0, np.inf])], 1.0),
     "expected a finite update, got one of norm inf (fix: look for a diverging model or a learning rate too large)"),
    (lambda: gaussian_noise([(3,)], 0.0, np.random.default_rng(0)),
     "expected a noise standard deviation > 0, got 0.0 (fix: compute it with noise_std)"),
])
def test_bad_privacy_parameters_are_refused_with_exact_messages(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        call()
    assert str(raised.value) == message


def test_a_model_with_batchnorm_is_refused_for_dp_sgd_naming_the_layer_and_the_fix() -> None:
    import torch
    from opacus.validators import ModuleValidator

    from fedgrove.dp_sgd import validate_for_dp_sgd

    model = torch.nn.Sequential(OrderedDict(
        features=torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU()),
        head=torch.nn.Linear(8, 2)))
    with pytest.raises(ValueError) as raised:
        validate_for_dp_sgd(model)
    assert str(raised.value) == (
        "expected a model Opacus can train with DP-SGD, got layer 'features.1' (BatchNorm1d): BatchNorm cannot support "
        "training with differential privacy. (fix: model = opacus.validators.ModuleValidator.fix(model) replaces "
        "them: BatchNorm by GroupNorm, LSTM, GRU and MultiheadAttention by Opacus's DP versions)")
    assert validate_for_dp_sgd(ModuleValidator.fix(model)) is None
    assert validate_for_dp_sgd(torch.nn.Sequential(torch.nn.Linear(4, 2))) is None
    with pytest.raises(ValueError) as raised:
        validate_for_dp_sgd(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval())
    assert str(raised.value) == ("expected the model in training mode for DP-SGD, got it in evaluation mode (fix: call "
                                 "model.train() before handing it to Opacus)")
