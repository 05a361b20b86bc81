"""Score new records with a saved model: the function behind `fedgrove predict --model M FILE`.

Why this module exists: a trained model is only useful with the exact preprocessing it was trained with;
`model.json` carries it, so scoring needs nothing else. The output is in the user's own labels and units: for
a classification, the predicted label, its probability and each label's probability; for a regression, the
predicted value. Cells the model needs but that are empty are imputed as in training, and counted
(`frame.attrs["imputed"]`); categories never seen in training count as `other` (`frame.attrs["other"]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, softmax

from fedgrove.model import outputs
from fedgrove.model_card import load_model


class PredictionInputError(ValueError):
    """The records cannot be scored as they are; the message names the row or column and the fix."""


def predict(model_path: str | Path, frame: pd.DataFrame, *, id_column: str | None = None) -> pd.DataFrame:
    """Per record (same index as `frame`), after `id_column` if given: a classification's `prediction` (a
    label), `probability` (of that label) and `probability_<label>` for every label; a regression's
    `prediction` in the target's units."""
    model, card = load_model(model_path)
    preprocessing = card.preprocessing
    if id_column is not None and id_column not in frame.columns:
        raise PredictionInputError(f"expected the id column {id_column!r} in the records, missing (fix: pass "
                                   "--id-column with one of the file's columns)")
    X, report = preprocessing.transform(frame)
    raw = outputs(model, X)
    out = pd.DataFrame(index=frame.index)
    if id_column is not None:
        out[id_column] = frame[id_column]
    if preprocessing.task == "regression":
        assert preprocessing.target_mean is not None and preprocessing.target_std is not None
        out["prediction"] = raw[:, 0] * preprocessing.target_std + preprocessing.target_mean
    else:
        labels = preprocessing.labels
        if preprocessing.task == "binary":
            positive = expit(raw[:, 0])
            probabilities = np.column_stack([1.0 - positive, positive])
        else:
            probabilities = softmax(raw, axis=1)
        chosen = probabilities.argmax(axis=1)  # binary: positive above 0.5, as training's accuracy counts it
        out["prediction"] = [labels[i] for i in chosen]
        out["probability"] = probabilities[np.arange(len(chosen)), chosen]
        for index, label in enumerate(labels):
            out[f"probability_{label}"] = probabilities[:, index]
    out.attrs["imputed"] = dict(report.imputed)
    out.attrs["other"] = dict(report.other)
    return out
