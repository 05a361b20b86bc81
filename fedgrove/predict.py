"""Score new records with a saved model: the function behind `fedgrove predict --model M FILE`.

Why this module exists: a trained model is only useful with the exact preprocessing it was trained with;
`model.json` carries it, so scoring needs nothing else. The output is in the user's own labels: the
predicted label, its probability, and the probability of each label. Cells the model needs but that are
empty are imputed as in training, and counted (`frame.attrs["imputed"]`); categories never seen in training
count as `other` (`frame.attrs["other"]`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from fedgrove.model import logits
from fedgrove.model_card import load_model


class PredictionInputError(ValueError):
    """The records cannot be scored as they are; the message names the row or column and the fix."""


def predict(model_path: str | Path, frame: pd.DataFrame, *, id_column: str | None = None) -> pd.DataFrame:
    """Per record (same index as `frame`): `prediction` (a label), `probability` (of that label), and
    `probability_<label>` for every label; `id_column`, if given, is carried through first."""
    model, card = load_model(model_path)
    preprocessing = card.preprocessing
    if id_column is not None and id_column not in frame.columns:
        raise PredictionInputError(f"expected the id column {id_column!r} in the records, missing (fix: pass "
                                   "--id-column with one of the file's columns)")
    X, report = preprocessing.transform(frame)
    positive = expit(logits(model, X))
    labels = preprocessing.labels
    chosen = positive > 0.5  # the same threshold as training's accuracy: logit > 0
    out = pd.DataFrame(index=frame.index)
    if id_column is not None:
        out[id_column] = frame[id_column]
    out["prediction"] = np.where(chosen, labels[1], labels[0]) if len(labels) == 2 else labels[0]
    out["probability"] = np.where(chosen, positive, 1.0 - positive)
    out[f"probability_{labels[0]}"] = 1.0 - positive
    out[f"probability_{labels[1]}"] = positive
    out.attrs["imputed"] = dict(report.imputed)
    out.attrs["other"] = dict(report.other)
    return out
