"""A self-describing trained model: `model.pt` (the weights) and `model.json` (everything else to predict).

Why this module exists: a model is only useful with the exact preprocessing it was trained with. The card
carries the spec (without any site's source), the agreed preprocessing (vocabularies, imputation and scaling
statistics, selected inputs), the labels and the final metrics, so `fedgrove predict` needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from fedgrove.encoding import Preprocessing
from fedgrove.model import build_model
from fedgrove.spec import FederationSpec

MODEL_FILE = "model.pt"
CARD_FORMAT = "fedgrove-model/1"


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = CARD_FORMAT
    run_id: str
    spec: FederationSpec
    preprocessing: Preprocessing
    n_inputs: int
    n_outputs: int = 1
    metrics: dict[str, float | None] = {}


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(model.pt, model.json)`` for a ``.pt`` file path or a directory (which then holds ``model.pt``)."""
    path = Path(path)
    weights = path if path.suffix == ".pt" else path / MODEL_FILE
    return weights, weights.with_suffix(".json")


def save_model(model: nn.Module, path: str | Path, card: ModelCard) -> tuple[Path, Path]:
    """Write the state dict to ``model.pt`` and the card to ``model.json``."""
    if card.n_inputs != len(card.preprocessing.input_names):
        raise ValueError(f"expected a model over the {len(card.preprocessing.input_names)} inputs of its "
                         f"preprocessing, got n_inputs={card.n_inputs}")
    weights, card_path = model_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    card_path.write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return weights, card_path


class ModelFileError(ValueError):
    """A model file that is missing or cannot be read; the message names the file and the fix."""


def load_model(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """Read ``model.pt`` and the ``model.json`` beside it; returns the model (eval mode) and its card."""
    weights, card_path = model_paths(path)
    for needed in (weights, card_path):
        if not needed.is_file():
            raise ModelFileError(f"expected {needed} (written by a finished run), found none (fix: pass the "
                                 "model.pt of a finished run, with its model.json beside it)")
    try:
        card = ModelCard.model_validate(json.loads(card_path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as exc:
        raise ModelFileError(f"{card_path}: not a fedgrove model card ({str(exc).splitlines()[0]}) (fix: pass the "
                             "model.json a run wrote)") from None
    model = build_model(card.n_inputs, card.n_outputs, seed=card.spec.train.seed, spec=card.spec.model)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    return model, card
