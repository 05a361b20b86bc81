"""Scoring new records with a saved model, in the user's labels, with the exact error for what cannot be scored."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from fedgrove.encoding import MissingColumns, NonNumericCell
from fedgrove.model import build_model, set_parameters
from fedgrove.model_card import ModelCard, save_model
from fedgrove.predict import PredictionInputError, predict
from fedgrove.simulation import simulate
from tests.data_sets import affairs, site_tables, spec_for

SPEC = spec_for("affair", sites=3, exclude=["patient_id"], train={"rounds": 3})


@functools.cache
def saved_model(folder: str) -> tuple[Path, ModelCard]:
    simulation = simulate(SPEC, site_tables(affairs(), SPEC), baselines=False, centralised=False)
    preprocessing = simulation.results[0].preprocessing
    card = ModelCard(run_id="r", spec=SPEC.shared(), preprocessing=preprocessing,
                     n_inputs=len(preprocessing.input_names))
    model = build_model(card.n_inputs, seed=0)
    set_parameters(model, simulation.parameters)
    weights, _ = save_model(model, Path(folder) / "model.pt", card)
    return weights, card


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return saved_model(str(tmp_path_factory.mktemp("model")))[0]


def records() -> pd.DataFrame:
    return affairs().drop(columns=["affair"]).iloc[:6].reset_index(drop=True)


def test_predictions_are_labels_with_their_probability_and_each_labels_probability(model_path: Path) -> None:
    frame = records()
    out = predict(model_path, frame, id_column="patient_id")
    assert list(out.columns) == ["patient_id", "prediction", "probability", "probability_no", "probability_yes"]
    assert out["patient_id"].tolist() == frame["patient_id"].tolist()
    assert set(out["prediction"]) <= {"no", "yes"}
    np.testing.assert_allclose(out["probability_no"] + out["probability_yes"], 1.0)
    chosen = np.where(out["prediction"] == "yes", out["probability_yes"], out["probability_no"])
    np.testing.assert_allclose(out["probability"], chosen)
    assert (out["probability"] >= 0.5).all()


def test_the_probability_is_the_model_on_the_imputed_standardised_inputs(model_path: Path) -> None:
    import torch

    _, card = saved_model(str(model_path.parent))
    frame = records()
    frame.loc[0, "age"] = np.nan
    out = predict(model_path, frame)
    weights = torch.load(model_path, weights_only=True)
    by_name = {c.name: c for c in card.preprocessing.encoded}
    column = {"age": card.preprocessing.numeric["age"]}
    z = np.zeros(len(frame)) + float(weights["bias"][0])
    for j, name in enumerate(card.preprocessing.input_names):
        encoded = by_name[name]
        if encoded.level is None:
            raw = frame[encoded.column].fillna(column.get(encoded.column, np.nan)).astype(float)
        else:
            raw = (frame[encoded.column].astype(object).where(frame[encoded.column].notna(), "<missing>")
                   == encoded.level).astype(float)
        z += float(weights["weight"][0, j]) * (raw.to_numpy() - encoded.mean) / encoded.std
    np.testing.assert_allclose(out["probability_yes"], expit(z), rtol=1e-5)
    assert out.attrs["imputed"] == {"age": 1}


def test_a_category_never_seen_in_training_counts_as_other_and_is_reported(model_path: Path) -> None:
    frame = records()
    frame.loc[2, "occupation"] = "astronaut"
    out = predict(model_path, frame)
    assert out.attrs["other"] == {"occupation": 1}


def test_a_file_without_a_column_the_model_needs_names_it(model_path: Path) -> None:
    with pytest.raises(MissingColumns) as raised:
        predict(model_path, records().drop(columns=["age", "religious"]))
    assert str(raised.value) == ("expected columns 'age', 'religious' in the table, missing (fix: add them; the model "
                                 "reads them)")


def test_text_in_a_numeric_column_names_its_row_and_column(model_path: Path) -> None:
    frame = records()
    frame["age"] = frame["age"].astype(object)
    frame.loc[4, "age"] = "forty"
    with pytest.raises(NonNumericCell) as raised:
        predict(model_path, frame)
    assert str(raised.value) == ("row 4, column 'age': expected a number, got text (fix: correct the cell, or leave "
                                 "it empty to impute it)")


def test_an_id_column_that_is_not_there_is_named(model_path: Path) -> None:
    with pytest.raises(PredictionInputError, match=r"^expected the id column 'mrn' in the records, missing"):
        predict(model_path, records(), id_column="mrn")


def test_the_cli_writes_csv_counts_rows_from_one_and_tells_what_it_imputed(model_path: Path, tmp_path: Path) -> None:
    frame = records()
    frame.loc[1, "age"] = np.nan
    frame.to_csv(tmp_path / "new.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "fedgrove_cli", "predict", "--model", str(model_path),
                           str(tmp_path / "new.csv")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "row,prediction,probability,probability_no,probability_yes"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert done.stderr.strip() == "imputed 1 empty cell as in training (age: 1)"
    frame["age"] = frame["age"].astype(object)
    frame.loc[3, "age"] = "forty"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    bad = subprocess.run([sys.executable, "-m", "fedgrove_cli", "predict", "--model", str(model_path),
                          str(tmp_path / "bad.csv")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert bad.returncode == 1
    assert bad.stdout == ""  # no prediction of the rows before it, and the error is not among them
    assert bad.stderr.strip() == ("error: row 4, column 'age': expected a number, got text (fix: correct the cell, or "
                                  "leave it empty to impute it)")
