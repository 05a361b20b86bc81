"""Score new records with a saved model: the function behind ``fedgrove predict --model runs/<id>/model.pt FILE.csv``.

Why this module exists: a trained model is only useful with the exact feature selection and standardisation
it was trained with; ``model.json`` (next to ``model.pt``) carries both, so scoring needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedgrove.model import load_model


def predict(model_path: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Per record (same index as ``frame``): ``probability`` of target 1 (benign) and ``prediction`` (0 or 1)."""
    model, selection = load_model(model_path)
    X = torch.from_numpy(selection.transform(frame))
    with torch.no_grad():
        logits = model(X).reshape(-1)
    return pd.DataFrame(
        {
            "probability": torch.sigmoid(logits).numpy().astype(np.float64),
            "prediction": (logits > 0).numpy().astype(np.int64),  # the same threshold as evaluate()
        },
        index=frame.index,
    )
