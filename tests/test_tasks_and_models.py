"""Every task and model kind in memory: multiclass and regression selection equal statsmodels and
scikit-learn on the pooled records, models build alike at every site, and each bad combination is refused
with its exact message before round 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedgrove.federated_selection
from fedgrove.federated_preprocessing import preprocessing_protocol
from fedgrove.lockstep import run_in_lockstep
from fedgrove.model import OptimizerState, build_model, get_parameters, set_parameters, train_local
from fedgrove.schema import FederationRefused
from fedgrove.simulation import simulate
from fedgrove.spec import SpecError, TrainSpec, parse_spec
from tests.data_sets import diabetes, pooled_training, site_tables, spec_for, wine
from tests.pooled_reference import (
    f_test_statistics,
    multinomial_lrt_statistics,
    pooled_preprocessing,
    top_k_with_dof,
)


def agreed(spec, tables):  # type: ignore[no-untyped-def]
    results, _ = run_in_lockstep({s: preprocessing_protocol(spec=spec, site=s, table=tables[s]) for s in spec.roster()})
    return results[spec.roster()[0]].preprocessing


def refused(spec, tables) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(FederationRefused) as raised:
        agreed(spec, tables)
    return str(raised.value)


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_multiclass_selection_equals_statsmodels_multinomial_lrt_on_the_pooled_records(split: str) -> None:
    spec = spec_for("cultivar", task="multiclass", select={"k": 5})
    tables = site_tables(wine(), spec, split=split)
    preprocessing = agreed(spec, tables)
    train = pooled_training(tables)
    pooled = pooled_preprocessing(train, numeric=[c for c in train.columns if c != "cultivar"], categorical=[],
                                  min_category_count=5)
    classes = train["cultivar"].map({label: i for i, label in enumerate(preprocessing.labels)}).to_numpy()
    expected, p_values = top_k_with_dof(multinomial_lrt_statistics(pooled, classes), 5, dof=2)
    assert preprocessing.labels == ["barbera", "barolo", "grignolino"]
    assert preprocessing.selected == expected
    np.testing.assert_allclose(preprocessing.p_values, p_values, rtol=1e-6)


def test_regression_selection_equals_scikit_learns_f_test_and_the_target_is_standardised_as_pooled() -> None:
    spec = spec_for("progression", task="regression", select={"k": 6})
    tables = site_tables(diabetes(), spec)
    preprocessing = agreed(spec, tables)
    train = pooled_training(tables)
    pooled = pooled_preprocessing(train, numeric=[c for c in train.columns if c != "progression"], categorical=[],
                                  min_category_count=5)
    y = train["progression"].to_numpy()
    expected, p_values = top_k_with_dof(f_test_statistics(pooled, y), 6, dof=(1, len(y) - 2))
    assert preprocessing.selected == expected
    np.testing.assert_allclose(preprocessing.p_values, p_values, rtol=1e-6)
    assert preprocessing.target_mean == pytest.approx(y.mean(), rel=1e-12)
    assert preprocessing.target_std == pytest.approx(y.std(ddof=0), rel=1e-12)
    assert preprocessing.labels == []


def test_a_regression_target_holding_text_is_refused_naming_the_site() -> None:
    spec = spec_for("progression", sites=3, task="regression")
    tables = site_tables(diabetes(), spec)
    train = tables["site-2"].train.copy()
    train["progression"] = train["progression"].astype(object)
    train.loc[3, "progression"] = "high"
    tables["site-2"] = type(tables["site-2"])("site-2", train, tables["site-2"].test, 0)
    assert refused(spec, tables) == (
        "the sites cannot federate: site site-2: target 'progression' holds text in 1 record; task regression needs "
        "numbers (fix: clean those values, or choose task binary or multiclass)"
    )


def test_a_regression_target_with_empty_values_is_refused_naming_the_count() -> None:
    frame = diabetes()
    spec = spec_for("progression", sites=3, task="regression")
    tables = site_tables(frame, spec)
    first = tables["site-1"]
    tables["site-1"] = type(first)("site-1", first.train, first.test, unlabelled=2)
    assert refused(spec, tables) == (
        "the sites cannot federate: site site-1: target 'progression' is empty in 2 records; task regression needs a "
        "number in every record (fix: fill those values, or drop the records)"
    )


def test_a_multiclass_task_on_one_label_is_refused() -> None:
    frame = wine()
    frame["cultivar"] = "barolo"
    spec = spec_for("cultivar", sites=3, task="multiclass")
    assert refused(spec, site_tables(frame, spec)) == (
        "the sites cannot federate: target 'cultivar' has 1 distinct label across the sites ('barolo'); task "
        "multiclass needs at least 2 (fix: choose another target)"
    )


@pytest.mark.parametrize(("model", "message"), [
    ({"kind": "mlp", "hidden": []}, "spec: model: an MLP needs at least one hidden layer, got hidden: [] (fix: e.g. "
                                     "hidden: [64, 32], or kind: logistic / linear)"),
    ({"kind": "mlp", "hidden": [8, -4]}, "spec: model.hidden.1: Input should be greater than 0, got -4"),
    ({"kind": "python"}, 'spec: model: model kind python needs builder: "package.module:function" (fix: name the '
                         "function that returns your torch.nn.Module)"),
    ({"kind": "linear"}, "spec: (top level): model kind linear does not fit task binary (fix: kind logistic, mlp or "
                         "python)"),
])
def test_a_model_that_cannot_be_is_refused_when_the_spec_is_read(model: dict, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"target": "y", "model": model})
    assert str(raised.value) == message


@pytest.mark.parametrize(("builder", "message"), [
    ("site_models_missing.networks:net", "model builder 'site_models_missing.networks:net' cannot be imported at this "
                                         "site: ModuleNotFoundError: No module named 'site_models_missing' (fix: install "
                                         "the package that holds it in this site's environment, or correct builder)"),
    ("tests.site_models.networks:refuses", "model builder 'tests.site_models.networks:refuses' raised ValueError: this "
                                          "builder needs option depth (called with n_inputs=4, n_outputs=1, options {})"),
    ("tests.site_models.networks:wrong_width", "model builder 'tests.site_models.networks:wrong_width': its module's "
                                               "output for 2 records has shape (2, 3), expected (2, 1) (fix: end the "
                                               "module with 1 output; it gets n_outputs=1)"),
    ("tests.site_models.networks:not_a_module", "model builder 'tests.site_models.networks:not_a_module' returned "
                                                "list, expected a torch.nn.Module"),
])
def test_a_builder_that_fails_stops_every_site_before_round_1_naming_it(builder: str, message: str) -> None:
    spec = spec_for("diagnosis", sites=2, select={"k": 4}, model={"kind": "python", "builder": builder})
    from tests.data_sets import breast_cancer

    assert refused(spec, site_tables(breast_cancer(), spec)) == (
        f"the sites cannot federate: site site-1: {message}; site site-2: {message}"
    )


def test_sites_whose_models_differ_are_refused_naming_the_layer_and_the_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same spec, but site-2's installed package builds a wider layer."""
    from tests.data_sets import breast_cancer

    spec = spec_for("diagnosis", sites=2, select={"k": 4}, model={"kind": "mlp", "hidden": [8]})
    real = fedgrove.federated_selection.signature
    calls = []

    def second_site_wider(model):  # type: ignore[no-untyped-def]
        calls.append(1)
        layers = real(model)
        return layers if len(calls) == 1 else [(n, [16, *s[1:]] if n == "0.weight" else s, d) for n, s, d in layers]

    monkeypatch.setattr(fedgrove.federated_selection, "signature", second_site_wider)
    assert refused(spec, site_tables(breast_cancer(), spec)) == (
        "the sites cannot federate: site site-2's model has layer '0.weight' of shape (16, 4) float32 where site "
        "site-1's has (8, 4) float32 (fix: give every site the same builder, options and package version)"
    )


def test_a_user_module_with_batchnorm_federates_its_running_statistics_and_rounds_its_counter() -> None:
    from tests.data_sets import breast_cancer

    spec = spec_for("diagnosis", sites=3, select={"k": 4}, train={"rounds": 3, "learning_rate": 0.05},
                    model={"kind": "python", "builder": "tests.site_models.networks:batchnorm_net",
                           "options": {"width": 6}})
    simulation = simulate(spec, site_tables(breast_cancer(), spec), baselines=False, centralised=False)
    names = [name for name, _ in build_model(4, 1, seed=0, spec=spec.model).state_dict().items()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                     "1.num_batches_tracked", "3.weight", "3.bias"]
    counter = simulation.parameters[names.index("1.num_batches_tracked")]
    assert counter.shape == () and counter == np.rint(counter) and counter > 0
    assert not np.allclose(simulation.parameters[names.index("1.running_mean")], 0.0)


def test_adam_steps_equal_torch_optim_adam_and_its_state_carries_over() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    train = TrainSpec(optimizer="adam", learning_rate=0.01, batch_size=16, weight_decay=0.01)
    ours, reference = build_model(3, seed=1), build_model(3, seed=1)
    state: OptimizerState | None = None
    for epoch in (1, 2):
        state = train_local(ours, X, y, task="binary", train=train, seed=4, epoch=epoch, state=state)
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=0.01)
    for epoch in (1, 2):
        order = np.random.default_rng([4, epoch, 0]).permutation(64)
        for start in range(0, 64, 16):
            batch = torch.from_numpy(order[start:start + 16])
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.binary_cross_entropy_with_logits(reference(torch.tensor(X)[batch]).reshape(-1),
                                                                 torch.tensor(y)[batch]).backward()
            optimizer.step()
    for a, b in zip(get_parameters(ours), get_parameters(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert state is not None and state.step == 8


def test_fedprox_pulls_the_local_update_towards_the_global_parameters() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    y = (X[:, 1] > 0).astype(np.float32)
    start = get_parameters(build_model(3, seed=2))
    moved = {}
    for mu in (0.0, 5.0):
        model = build_model(3, seed=2)
        set_parameters(model, start)
        anchor = [p.detach().clone() for p in model.parameters()]
        train_local(model, X, y, task="binary", train=TrainSpec(proximal_mu=mu, learning_rate=0.1), seed=0, epoch=1,
                    anchor=anchor)
        moved[mu] = float(sum(np.abs(a - b).sum() for a, b in zip(get_parameters(model), start, strict=True)))
    assert moved[5.0] < 0.8 * moved[0.0]
