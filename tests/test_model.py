"""The model: seeding, local training, parameter exchange, and its card (`model.pt` + `model.json`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrove.model import build_model, get_parameters, logits, set_parameters, train_local
from fedgrove.model_card import ModelCard, ModelFileError, load_model, save_model
from fedgrove.simulation import simulate
from fedgrove.spec import ModelSpec, TrainSpec
from tests.data_sets import breast_cancer, site_tables, spec_for

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 4)).astype(np.float32)
Y = (X @ np.array([1.5, -2.0, 0.5, 0.0]) + RNG.normal(scale=0.5, size=200) > 0).astype(np.float32)


def test_training_matches_torch_optim_sgd_bit_for_bit() -> None:
    """`train_local`'s own SGD step makes the update torch's optimizer makes (same seeds, same batches)."""
    ours, reference = build_model(4, seed=3), build_model(4, seed=3)
    train = TrainSpec(local_epochs=3)
    train_local(ours, X, Y, task="binary", train=train, seed=7, epoch=2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=train.learning_rate)
    X_t, y_t = torch.tensor(X), torch.tensor(Y)
    reference.train()
    for local_epoch in range(train.local_epochs):
        order = np.random.default_rng([7, 2, local_epoch]).permutation(len(X_t))
        for start in range(0, len(order), train.batch_size):
            batch = torch.from_numpy(order[start : start + train.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.BCEWithLogitsLoss()(reference(X_t[batch]).reshape(-1), y_t[batch])
            loss.backward()
            optimizer.step()
    for a, b in zip(get_parameters(ours), get_parameters(reference), strict=True):
        assert a.tobytes() == b.tobytes()


def test_the_flows_and_a_trained_model_leave_heavy_modules_they_do_not_need_unimported() -> None:
    """Memory in every process that runs a leaf: `torch.optim` imports torch._dynamo, `skip_init` imports sympy
    (~800 modules, ~70 MB together), statsmodels (~31 MB) serves only the tests' oracle and matplotlib
    (~25 MB) only the final plot. Checked in a fresh interpreter, since this one may have imported them."""
    code = (
        "import sys, numpy as np\n"
        "import flows.federated_training, flows.leaf_training\n"
        "from fedgrove.model import build_model, train_local, logits\n"
        "from fedgrove.spec import TrainSpec\n"
        "X = np.random.default_rng(0).random((40, 4)).astype(np.float32); y = (X[:, 0] > 0.5).astype(np.float32)\n"
        "model = build_model(4, seed=0); train_local(model, X, y, task=\"binary\", train=TrainSpec(), seed=0, epoch=1)\n"
        "logits(model, X)\n"
        "heavy = ('torch._dynamo', 'torch._inductor', 'sympy', 'mpmath', 'statsmodels', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_build_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, again, other = build_model(4, seed=1), build_model(4, seed=1), build_model(4, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(get_parameters(first), get_parameters(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(get_parameters(first)[0], get_parameters(other)[0])
    assert torch.get_num_threads() == 1


def test_training_with_dropout_is_seeded_by_seed_and_epoch_formats_no_stack_and_leaves_the_global_rng_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dropout draws from the CPU generator `train_local` seeds; seeding it through `torch.manual_seed` would
    also queue the seed for CUDA, formatting the whole stack at every fit (CUDA is never initialised here)."""
    import traceback

    def refuse(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("train_local formatted a stack")

    monkeypatch.setattr(traceback, "format_stack", refuse)
    spec = ModelSpec(kind="mlp", hidden=[8], dropout=0.5)
    state = torch.random.get_rng_state()
    trained = []
    for epoch in (1, 1, 2):
        model = build_model(4, seed=0, spec=spec)
        train_local(model, X, Y, task="binary", train=TrainSpec(), seed=7, epoch=epoch)
        trained.append(get_parameters(model))
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(trained[0], trained[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trained[0][0], trained[2][0])  # another epoch: other shuffles, other masks


def test_get_parameters_returns_float32_weight_then_bias_copies() -> None:
    model = build_model(4, seed=0)
    params = get_parameters(model)
    assert [(p.shape, p.dtype) for p in params] == [((1, 4), np.float32), ((1,), np.float32)]
    params[0][:] = 99.0
    assert not np.array_equal(get_parameters(model)[0], params[0])


def test_set_parameters_rejects_a_wrong_shape_with_the_exact_message() -> None:
    model = build_model(4, seed=0)
    with pytest.raises(ValueError) as caught:
        set_parameters(model, [np.zeros(4, dtype=np.float32), np.zeros(1, dtype=np.float32)])
    assert str(caught.value) == (
        "layer 0 (weight): expected shape (1, 4) dtype float32, got shape (4,) dtype float32 "
        "(fix: send get_parameters() of the same model)"
    )


def test_set_parameters_rejects_a_wrong_number_of_arrays() -> None:
    with pytest.raises(ValueError) as caught:
        set_parameters(build_model(4, seed=0), [np.zeros((1, 4), dtype=np.float32)])
    assert str(caught.value) == ("expected 2 parameter arrays (weight, bias), got 1 "
                                 "(fix: send get_parameters() of the same model)")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_set_parameters_rejects_nan_and_inf_and_leaves_the_model_unchanged(bad: float) -> None:
    model = build_model(4, seed=0)
    before = get_parameters(model)
    weight = np.zeros((1, 4), dtype=np.float32)
    weight[0, 2] = bad
    with pytest.raises(ValueError) as caught:
        set_parameters(model, [weight, np.zeros(1, dtype=np.float32)])
    assert str(caught.value) == ("layer 0 (weight): expected finite values, got NaN or Inf "
                                 "(fix: training diverged; lower the learning rate)")
    np.testing.assert_array_equal(get_parameters(model)[0], before[0])


def test_train_local_is_reproducible_for_the_same_seed_and_epoch_and_differs_for_another_epoch() -> None:
    results = []
    for epoch in (1, 1, 2):
        model = build_model(4, seed=0)
        train_local(model, X, Y, task="binary", train=TrainSpec(), seed=5, epoch=epoch)
        results.append(get_parameters(model))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert not np.array_equal(results[0][0], results[2][0])


def test_logits_are_the_linear_model_of_the_inputs() -> None:
    model = build_model(2, seed=0)
    set_parameters(model, [np.array([[1.0, -2.0]], dtype=np.float32), np.array([0.5], dtype=np.float32)])
    got = logits(model, np.array([[2.0, 1.0], [0.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(got, [2.0 - 2.0 + 0.5, -6.0 + 0.5])


def trained_card(tmp_path: Path) -> tuple[Path, ModelCard, torch.nn.Module]:
    spec = spec_for("diagnosis", sites=2, select={"k": 3}, train={"rounds": 2})
    simulation = simulate(spec, site_tables(breast_cancer(), spec), baselines=False, centralised=False)
    preprocessing = simulation.results[0].preprocessing
    model = build_model(3, seed=0)
    set_parameters(model, simulation.parameters)
    card = ModelCard(run_id="r1", spec=spec.shared(), preprocessing=preprocessing, n_inputs=3,
                     metrics={"accuracy_test": 0.9, "loss_test": 0.2, "auc_test": None})
    weights, _ = save_model(model, tmp_path / "run-1" / "model.pt", card)
    return weights, card, model


def test_save_and_load_round_trip_gives_the_same_card_and_identical_logits(tmp_path: Path) -> None:
    weights, card, model = trained_card(tmp_path)
    assert json.loads(weights.with_suffix(".json").read_text())["preprocessing"]["selected"] == \
        card.preprocessing.selected
    loaded, loaded_card = load_model(weights)
    assert loaded_card == card
    np.testing.assert_array_equal(logits(loaded, X[:, :3]), logits(model, X[:, :3]))
    assert load_model(weights.parent)[1] == card  # a folder holding model.pt works too


def test_load_model_without_model_json_says_which_file_is_missing(tmp_path: Path) -> None:
    weights, _, _ = trained_card(tmp_path)
    weights.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError) as caught:
        load_model(weights)
    assert str(caught.value) == (f"expected {weights.with_suffix('.json')} (written by a finished run), found none "
                                 "(fix: pass the model.pt of a finished run, with its model.json beside it)")


def test_save_model_refuses_a_card_whose_input_count_differs_from_its_preprocessing(tmp_path: Path) -> None:
    _, card, model = trained_card(tmp_path)
    with pytest.raises(ValueError, match=r"^expected a model over the 3 inputs of its preprocessing, got n_inputs=4$"):
        save_model(model, tmp_path / "other", card.model_copy(update={"n_inputs": 4}))
