"""Whether an archive's layers fit an aggregation, said in the words a leaf's operator can act on.

A branch may declare its model's layers in its model configuration, `{"layers": [{"shape": [4, 7], "dtype":
"float32"}, ...]}`: every upload is then checked against that, and no leaf's first upload decides the round's
shapes and dtypes for the others. Without it, the first upload of a round decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedgrove_common.protocol import layer_name


@dataclass(frozen=True)
class LayerSpec:
    shape: tuple[int, ...]
    dtype: np.dtype


def specs_of(layers: Sequence[np.ndarray]) -> list[LayerSpec]:
    return [LayerSpec(layer.shape, layer.dtype) for layer in layers]


LAYERS_KEY = "layers"


class UnreadableLayers(ValueError):
    """A branch's declared layers are not a list of shapes and float dtypes."""


def declared_layers(model_config: Mapping[str, object]) -> list[LayerSpec] | None:
    """The layers `model_config` declares, or None when it declares none; UnreadableLayers if it cannot be
    read."""
    if LAYERS_KEY not in model_config:
        return None
    layers = model_config[LAYERS_KEY]
    if not isinstance(layers, list) or not layers:
        raise UnreadableLayers(_unreadable(f"{layers!r}"[:200]))
    specs = []
    for index, layer in enumerate(layers):
        spec = _spec(layer)
        if spec is None:
            raise UnreadableLayers(_unreadable(f"layer {index}: {layer!r}"[:200]))
        specs.append(spec)
    return specs


def _spec(layer: object) -> LayerSpec | None:
    if not isinstance(layer, dict) or set(layer) != {"shape", "dtype"}:
        return None
    shape, dtype = layer["shape"], layer["dtype"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape) or not isinstance(dtype, str):
        return None
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        return None
    return LayerSpec(tuple(shape), parsed) if parsed.kind == "f" else None


def _unreadable(got: str) -> str:
    return ('expected model_config.layers to be a list of {"shape": [n, ...], "dtype": "float32"} with dimensions '
            f"of 0 or more and a float dtype, got {got} (fix: declare each layer's shape and dtype as the leaves "
            "send them)")


def describe_undeclared(declared: Sequence[LayerSpec], got: Sequence[np.ndarray]) -> str | None:
    """What differs between the layers a branch declares and an archive's; None if nothing."""
    fix = "(fix: send the model the branch was created for)"
    if len(declared) != len(got):
        return f"expected {len(declared)} layers, as the branch's model configuration declares, got {len(got)} {fix}"
    for index, (want, have) in enumerate(zip(declared, got, strict=True)):
        if want.shape != have.shape or want.dtype != have.dtype:
            return (f"expected {layer_name(index)} with shape {want.shape} and dtype {want.dtype}, as the branch's "
                    f"model configuration declares, got shape {have.shape} and dtype {have.dtype} {fix}")
    return None


def describe_mismatch(expected: Sequence[LayerSpec], got: Sequence[np.ndarray]) -> str | None:
    """What differs between the layers the open aggregation expects and an archive's; None if nothing."""
    if len(expected) != len(got):
        return f"archive has {len(got)} layers; the open aggregation expects {len(expected)}"
    for index, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want.shape != have.shape or want.dtype != have.dtype:
            return (
                f"{layer_name(index)} has shape {have.shape} and dtype {have.dtype}; "
                f"the open aggregation expects shape {want.shape} and dtype {want.dtype}"
            )
    return None
