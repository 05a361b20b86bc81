"""The check before record-level DP (DP-SGD with Opacus): can Opacus train this model, and if not, which layer.

Why this module exists: Opacus computes per-sample gradients, which some layers forbid (BatchNorm mixes the
samples of a batch) or need replacing for (LSTM, GRU, MultiheadAttention). Its `ModuleValidator.validate`
lists the problems without saying where they are; a site's operator needs the layer's name and the fix
before round 1, not a failure inside training. This module imports opacus (and torch): import it only in
processes that train with DP-SGD.
"""

from __future__ import annotations

import torch
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from opacus.validators.errors import IllegalModuleConfigurationError, ShouldReplaceModuleError


def _first_sentence(error: Exception) -> str:
    text = str(error)
    return text.split(". ", 1)[0].rstrip(".") + "."


def validate_for_dp_sgd(model: torch.nn.Module) -> None:
    """ValueError naming every layer Opacus cannot train with DP-SGD, and the fix; None if it can."""
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    if not model.training and any(isinstance(error, IllegalModuleConfigurationError) for error in errors):
        raise ValueError("expected the model in training mode for DP-SGD, got it in evaluation mode (fix: call "
                         "model.train() before handing it to Opacus)")
    problems, replaceable = [], True
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        for error in validator(module) if validator else []:
            problems.append(f"layer {name!r} ({type(module).__name__}): {_first_sentence(error)}")
            replaceable = replaceable and isinstance(error, ShouldReplaceModuleError)
    if not problems:  # a problem Opacus reports without a layer to name
        problems = [_first_sentence(error) for error in errors]
        replaceable = False
    fix = ("model = opacus.validators.ModuleValidator.fix(model) replaces them: BatchNorm by GroupNorm, LSTM, GRU "
           "and MultiheadAttention by Opacus's DP versions" if replaceable else
           "replace these layers by ones Opacus supports, e.g. BatchNorm by GroupNorm; ModuleValidator.fix(model) "
           "does what it can")
    raise ValueError(f"expected a model Opacus can train with DP-SGD, got {'; '.join(problems)} (fix: {fix})")
