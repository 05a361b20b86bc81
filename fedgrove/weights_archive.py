"""A leaf's parameter archive: what the official client's `save_weights` writes, stored instead of deflated.

Why this module exists: `Client.save_weights` writes `np.savez_compressed`. Trained float weights barely
compress (7% for a 100k-parameter MLP), and deflating them cost 15 ms per site per round on this project's
2-core machines, on the round's critical path. This writes the same archive, with the same keys in the same
order and the same dtypes (`weighting` as one float64, then `layer_0` ... `layer_n`), with `np.savez`. Any
reader of npz files reads both kinds, and the upload still goes through the client's own `file_upload`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedgrove_common.protocol import WEIGHTING_KEY, layer_entries


def write_weights_archive(path: Path, weighting: float, parameters: Sequence[np.ndarray]) -> Path:
    """Write `<path>.npz` (the suffix added if missing, as the client does); returns its path."""
    target = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    np.savez(target, **{WEIGHTING_KEY: np.array([weighting], dtype=np.float64)}, **layer_entries(list(parameters)))
    return target
