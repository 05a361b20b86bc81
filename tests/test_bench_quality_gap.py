"""The quality benchmark's gap to centralised and its standard error (bench/quality.py), on made-up runs.

The README's quality verdicts rest on these figures, so they are checked against sums done by hand here.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import gap_to_centralised, verdict  # noqa: E402


def runs(*pairs: tuple[float, float]) -> list[dict]:
    return [{"federated": federated, "centralised": centralised} for federated, centralised in pairs]


def test_accuracy_gap_is_points_below_centralised_with_its_standard_error() -> None:
    # gaps in points: -2, 0, +1, -3; mean -1; sample sd sqrt((1 + 1 + 4 + 4) / 3) = sqrt(10/3); s.e. = sd / 2
    gap, error = gap_to_centralised("binary", runs((0.93, 0.95), (0.95, 0.95), (0.96, 0.95), (0.92, 0.95)))
    assert gap == pytest.approx(-1.0)
    assert error == pytest.approx(math.sqrt(10 / 3) / 2)


def test_regression_gap_is_the_rmse_percentage_above_centralised() -> None:
    # 55 against 50 is 10% worse, 48 against 50 is 4% better: mean +3, sd 7 * sqrt(2), s.e. sd / sqrt(2) = 7
    gap, error = gap_to_centralised("regression", runs((55.0, 50.0), (48.0, 50.0)))
    assert gap == pytest.approx(3.0)
    assert error == pytest.approx(7.0)


def test_one_seed_has_no_standard_error() -> None:
    gap, error = gap_to_centralised("multiclass", runs((0.90, 0.92)))
    assert gap == pytest.approx(-2.0)
    assert math.isnan(error)


@pytest.mark.parametrize(("task", "federated", "centralised", "expected"), [
    ("binary", 0.940, 0.949, True),        # 0.9 points below: within 1
    ("binary", 0.938, 0.949, False),       # 1.1 points below
    ("multiclass", 0.931, 0.950, True),    # 1.9 points below: within 2
    ("multiclass", 0.929, 0.950, False),
    ("regression", 52.4, 50.0, True),      # 4.8% above: within 5%
    ("regression", 52.6, 50.0, False),
])
def test_verdict_tolerances(task: str, federated: float, centralised: float, expected: bool) -> None:
    assert verdict(task, federated, centralised) is expected
