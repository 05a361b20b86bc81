"""The logistic-regression model: seeding, local training, parameter exchange, saving and predicting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedgrove.data import TARGET_COLUMN, load_dataset, split_dataset
from fedgrove.features import FeatureSelection, select_features
from fedgrove.model import (
    TrainConfig,
    build_model,
    evaluate,
    get_parameters,
    load_model,
    save_model,
    set_parameters,
    train_local,
)
from fedgrove.predict import predict

TEST, PARTITIONS = split_dataset(load_dataset(), organisations=5, seed=0)
TRAIN = pd.concat(PARTITIONS.values())
SELECTION = select_features(TRAIN, k=4)
X, Y = SELECTION.transform(TRAIN), TRAIN[TARGET_COLUMN].to_numpy()


def test_training_matches_torch_optim_sgd_bit_for_bit() -> None:
    """`train_local`'s own SGD step makes the update torch's optimizer makes (same seeds, same batches)."""
    ours, reference = build_model(4, seed=3), build_model(4, seed=3)
    config = TrainConfig(local_epochs=3)
    train_local(ours, X, Y, config=config, seed=7, epoch=2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=config.learning_rate)
    X_t, y_t = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
    reference.train()
    for local_epoch in range(config.local_epochs):
        order = np.random.default_rng([7, 2, local_epoch]).permutation(len(X_t))
        for start in range(0, len(order), config.batch_size):
            batch = torch.from_numpy(order[start : start + config.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.BCEWithLogitsLoss()(reference(X_t[batch]).reshape(-1), y_t[batch])
            loss.backward()
            optimizer.step()
    for a, b in zip(get_parameters(ours), get_parameters(reference), strict=True):
        assert a.tobytes() == b.tobytes()


def test_the_flows_and_a_trained_model_leave_heavy_modules_they_do_not_need_unimported() -> None:
    """Memory in every process that runs a leaf: `torch.optim` imports torch._dynamo, `skip_init` imports sympy
    (~800 modules, ~70 MB together), statsmodels (~31 MB) serves only the pooled selection and matplotlib
    (~25 MB) only the final plot. Checked in a fresh interpreter, since this one may have imported them."""
    code = (
        "import sys, numpy as np\n"
        "import flows.federated_training, flows.leaf_training\n"
        "from fedgrove.model import build_model, train_local, evaluate, TrainConfig\n"
        "X = np.random.default_rng(0).random((40, 4)).astype(np.float32); y = (X[:, 0] > 0.5).astype(np.float32)\n"
        "model = build_model(4, seed=0); train_local(model, X, y, config=TrainConfig(), seed=0, epoch=1)\n"
        "evaluate(model, X, y)\n"
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


def test_get_parameters_returns_float32_weight_then_bias_copies() -> None:
    model = build_model(4, seed=0)
    params = get_parameters(model)
    assert [(p.shape, p.dtype) for p in params] == [((1, 4), np.float32), ((1,), np.float32)]
    params[0][:] = 99.0
    assert not np.array_equal(get_parameters(model)[0], params[0])


def test_set_parameters_then_get_parameters_round_trips() -> None:
    model = build_model(4, seed=0)
    params = [np.arange(4, dtype=np.float32).reshape(1, 4), np.array([0.5], dtype=np.float32)]
    set_parameters(model, params)
    for got, sent in zip(get_parameters(model), params, strict=True):
        np.testing.assert_array_equal(got, sent)


def test_set_parameters_rejects_a_wrong_shape_with_the_exact_message() -> None:
    model = build_model(4, seed=0)
    with pytest.raises(ValueError) as caught:
        set_parameters(model, [np.zeros(4, dtype=np.float32), np.zeros(1, dtype=np.float32)])
    assert str(caught.value) == (
        "layer 0 (weight): expected shape (1, 4) dtype float32, got shape (4,) dtype float32 "
        "(fix: send get_parameters() of the same model)"
    )


def test_set_parameters_rejects_a_wrong_dtype_naming_the_layer() -> None:
    model = build_model(4, seed=0)
    with pytest.raises(ValueError) as caught:
        set_parameters(model, [np.zeros((1, 4), dtype=np.float32), np.zeros(1, dtype=np.float64)])
    assert str(caught.value) == (
        "layer 1 (bias): expected shape (1,) dtype float32, got shape (1,) dtype float64 "
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
        train_local(model, X, Y, config=TrainConfig(), seed=5, epoch=epoch)
        results.append(get_parameters(model))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert not np.array_equal(results[0][0], results[2][0])


def test_train_local_runs_local_epochs_passes_and_lowers_the_loss() -> None:
    model = build_model(4, seed=0)
    _, loss_before = evaluate(model, X, Y)
    train_local(model, X, Y, config=TrainConfig(local_epochs=3), seed=0, epoch=1)
    accuracy, loss_after = evaluate(model, X, Y)
    assert loss_after < loss_before / 2
    assert accuracy > 0.9


def test_evaluate_returns_accuracy_and_mean_log_loss() -> None:
    model = build_model(2, seed=0)
    set_parameters(model, [np.array([[1.0, 0.0]], dtype=np.float32), np.array([0.0], dtype=np.float32)])
    X_small = np.array([[2.0, 5.0], [-1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    y_small = np.array([1, 1, 0])
    accuracy, loss = evaluate(model, X_small, y_small)
    assert accuracy == pytest.approx(1 / 3)
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 3.0])))
    expected = -np.mean([np.log(p[0]), np.log(p[1]), np.log(1 - p[2])])
    assert loss == pytest.approx(expected, rel=1e-6)


def test_save_and_load_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    model = build_model(4, seed=0)
    train_local(model, X, Y, config=TrainConfig(), seed=0, epoch=1)
    metrics = {"accuracy_test": 0.95, "loss_test": 0.12}
    weights, card = save_model(model, tmp_path / "run-1" / "model.pt", selection=SELECTION, metrics=metrics)
    assert (weights, card) == (tmp_path / "run-1" / "model.pt", tmp_path / "run-1" / "model.json")
    document = json.loads(card.read_text())
    assert document == {**SELECTION.model_dump(), "n_features": 4, "metrics": metrics}

    loaded, selection = load_model(weights)
    assert selection == SELECTION
    X_test = SELECTION.transform(TEST)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(torch.from_numpy(X_test)).numpy(), model(torch.from_numpy(X_test)).numpy())
    predicted = predict(weights, TEST)
    assert list(predicted.columns) == ["probability", "prediction"]
    assert predicted.index.equals(TEST.index)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(X_test))).numpy().reshape(-1)
    np.testing.assert_array_equal(predicted["probability"].to_numpy(), expected.astype(np.float64))
    assert predicted["prediction"].tolist() == (expected > 0.5).astype(int).tolist()


def test_save_model_into_a_directory_writes_model_pt_and_model_json(tmp_path: Path) -> None:
    paths = save_model(build_model(4, seed=0), tmp_path, selection=SELECTION, metrics={})
    assert paths == (tmp_path / "model.pt", tmp_path / "model.json")


def test_save_model_refuses_a_model_that_does_not_match_the_selection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected a model over the 4 selected features, got n_features=3"):
        save_model(build_model(3, seed=0), tmp_path, selection=SELECTION, metrics={})


def test_load_model_without_model_json_says_which_file_is_missing(tmp_path: Path) -> None:
    weights, card = save_model(build_model(4, seed=0), tmp_path, selection=SELECTION, metrics={})
    card.unlink()
    with pytest.raises(FileNotFoundError) as caught:
        load_model(weights)
    assert str(caught.value) == (f"expected {card} (written by save_model), found none "
                                 "(fix: pass the model.pt of a finished run)")


def test_predict_on_records_without_a_selected_feature_names_it(tmp_path: Path) -> None:
    weights, _ = save_model(build_model(4, seed=0), tmp_path, selection=SELECTION, metrics={})
    with pytest.raises(ValueError, match=r"^expected columns \['worst area'\] in the frame, they are missing"):
        predict(weights, TEST.drop(columns=["worst area"]))


def test_train_config_refuses_unknown_optimizers_and_nonpositive_learning_rates() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0.0)
    assert TrainConfig() == TrainConfig(learning_rate=0.3, batch_size=32, local_epochs=1, optimizer="sgd")


def test_feature_selection_and_model_card_are_plain_json() -> None:
    assert FeatureSelection.model_validate(json.loads(SELECTION.model_dump_json())) == SELECTION
