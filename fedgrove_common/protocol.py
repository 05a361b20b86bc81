"""What the BranchKey archives say, shared by the server that reads them and the pipeline that writes them.

A federated-learning archive holds `weighting` and `layer_0`, `layer_1`, ...; an aggregate holds the layers
only. A federated-analytics archive marks itself with `PAYLOAD_KIND_KEY` = `FEDERATED_ANALYTICS`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

Array = TypeVar("Array")

FEDERATED_LEARNING = "federated_learning"
FEDERATED_ANALYTICS = "federated_analytics"
PAYLOAD_KIND_KEY = "__bk_payload_kind__"
WEIGHTING_KEY = "weighting"
LAYER_PREFIX = "layer_"
# One name per index: no layer_01 beside layer_1.
LAYER_NAME = re.compile(r"^layer_(0|[1-9][0-9]*)$")


def layer_name(index: int) -> str:
    return f"{LAYER_PREFIX}{index}"


def layer_entries(layers: Sequence[Array]) -> dict[str, Array]:
    """`{"layer_0": layers[0], ...}`, as an aggregate or a leaf's archive names them."""
    return {layer_name(index): layer for index, layer in enumerate(layers)}
