"""Privacy settings in the spec and before round 1: each bad combination refused with its exact message, the
DP budget agreed by every site, secure aggregation exact in the simulation."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrove.dp_accounting import site_level_epsilon
from fedgrove.federated_preprocessing import preprocessing_protocol
from fedgrove.lockstep import run_in_lockstep
from fedgrove.schema import FederationRefused
from fedgrove.simulation import simulate
from fedgrove.spec import SpecError, parse_spec
from tests.data_sets import breast_cancer, site_tables, spec_for


@pytest.mark.parametrize(("privacy", "message"), [
    ({"dp": {"noise_multiplier": 0}}, "spec: privacy.dp.noise_multiplier: Input should be greater than 0, got 0"),
    ({"dp": {"clip_norm": -1.0}}, "spec: privacy.dp.clip_norm: Input should be greater than 0, got -1.0"),
    ({"dp": {"delta": 1.5}}, "spec: privacy.dp.delta: Input should be less than 1, got 1.5"),
    ({"secure_aggregation": True, "dp": {"level": "party"}},
     "spec: privacy.dp.level: Input should be 'site' or 'record', got 'party'"),
])
def test_a_dp_setting_out_of_range_is_refused_when_the_spec_is_read(privacy: dict, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"target": "y", "privacy": privacy})
    assert str(raised.value) == message


def test_record_level_dp_with_adam_or_fedprox_and_secure_aggregation_alone_are_refused() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"target": "y", "train": {"optimizer": "adam"}, "privacy": {"dp": {"level": "record"}}})
    assert str(raised.value) == (
        "spec: (top level): record-level DP trains with DP-SGD (Opacus's optimizer over SGD), without proximal_mu "
        "or Adam (fix: train.optimizer: sgd and train.proximal_mu: 0, or dp.level: site)")
    with pytest.raises(SpecError) as raised:
        parse_spec({"target": "y", "sites": ["only"], "privacy": {"secure_aggregation": True}})
    assert str(raised.value) == (
        "spec: (top level): secure aggregation hides a site among the others and needs at least 2 sites (fix: add "
        "sites, or set privacy.secure_aggregation: false)")


def agree(spec, tables):  # type: ignore[no-untyped-def]
    return run_in_lockstep({s: preprocessing_protocol(spec=spec, site=s, table=tables[s], run_id="r")
                            for s in spec.roster()})[0]


def test_a_target_epsilon_already_exceeded_at_round_1_stops_every_site() -> None:
    spec = spec_for("diagnosis", sites=3, select={"k": 4},
                    privacy={"dp": {"noise_multiplier": 1.0, "target_epsilon": 1.0}})
    with pytest.raises(FederationRefused) as raised:
        agree(spec, site_tables(breast_cancer(), spec))
    first = site_level_epsilon(1.0, 1, 1e-5)
    assert str(raised.value) == (
        f"the sites cannot federate: dp.target_epsilon 1 is already exceeded after one round at sites site-1, "
        f"site-2, site-3 (ε = {first:.3g} at δ = 1e-05 here) (fix: raise dp.noise_multiplier or dp.target_epsilon)")


def test_every_site_trains_the_rounds_the_budget_allows_and_knows_the_epsilon_of_each() -> None:
    spec = spec_for("diagnosis", sites=3, select={"k": 4}, train={"rounds": 30},
                    privacy={"dp": {"noise_multiplier": 2.0, "target_epsilon": 8.0}})
    plans = {site: result.privacy for site, result in agree(spec, site_tables(breast_cancer(), spec)).items()}
    expected = max(r for r in range(1, 31) if site_level_epsilon(2.0, r, 1e-5) <= 8.0)
    assert {plan.rounds for plan in plans.values()} == {expected}
    assert plans["site-1"].epsilons == [site_level_epsilon(2.0, r, 1e-5) for r in range(1, expected + 1)]
    assert plans["site-1"].stop_message == (f"stopped after {expected} of 30 rounds: one more would have pushed ε "
                                            "past dp.target_epsilon 8 (δ = 1e-05)")


def test_record_level_dp_with_a_layer_opacus_cannot_handle_stops_every_site_naming_it() -> None:
    spec = spec_for("diagnosis", sites=2, select={"k": 4}, privacy={"dp": {"level": "record"}},
                    model={"kind": "python", "builder": "tests.site_models.networks:batchnorm_net"})
    with pytest.raises(FederationRefused) as raised:
        agree(spec, site_tables(breast_cancer(), spec))
    assert "expected a model Opacus can train with DP-SGD, got layer '1' (BatchNorm1d)" in str(raised.value)
    assert str(raised.value).startswith("the sites cannot federate: site site-1: ")


def test_secure_aggregation_gives_the_plain_federation_bit_for_bit_in_the_simulation() -> None:
    plain_spec = spec_for("diagnosis", sites=4, select={"k": 4}, train={"rounds": 4})
    tables = site_tables(breast_cancer(), plain_spec)
    plain = simulate(plain_spec, tables, baselines=False, centralised=False)
    secure = simulate(plain_spec.model_copy(update={"privacy": parse_spec(
        {"target": "d", "privacy": {"secure_aggregation": True}}).privacy}), tables, baselines=False,
        centralised=False)
    for a, b in zip(plain.parameters, secure.parameters, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=0)


def test_site_level_dp_noise_moves_the_model_and_is_drawn_afresh() -> None:
    spec = spec_for("diagnosis", sites=3, select={"k": 4}, train={"rounds": 3},
                    privacy={"dp": {"noise_multiplier": 1.0, "clip_norm": 0.5}})
    tables = site_tables(breast_cancer(), spec)
    first = simulate(spec, tables, baselines=False, centralised=False)
    again = simulate(spec, tables, baselines=False, centralised=False)
    assert not np.array_equal(first.parameters[0], again.parameters[0])
    assert [m.epsilon for m in first.results[0].federated] == [site_level_epsilon(1.0, r, 1e-5) for r in (1, 2, 3)]
