"""Whether an archive's layers fit an aggregation, said in the words a leaf's operator can act on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedgrove_common.protocol import layer_name


@dataclass(frozen=True)
class LayerSpec:
    shape: tuple[int, ...]
    dtype: np.dtype


def specs_of(layers: Sequence[np.ndarray]) -> list[LayerSpec]:
    return [LayerSpec(layer.shape, layer.dtype) for layer in layers]


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
