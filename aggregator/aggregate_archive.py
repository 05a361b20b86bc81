"""Writes an aggregate as an `.npz` archive, each entry deflated when that makes it smaller.

An aggregate of layers that are mostly zeros (a sparse model, or a leaf's zero bomb) deflates to almost
nothing, one of trained float weights hardly at all, and deflating costs CPU on the round's critical path.
So each entry's first MiB is deflated as a sample: the entry is deflated (level 1, the fastest) if the
sample shrinks by a tenth or more, stored as it is otherwise. `np.load` reads either.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

SAMPLE_BYTES = 1024 * 1024
WORTH_IT = 0.9  # deflate when the sample shrinks to at most this fraction of its size


def write_aggregate(handle: BinaryIO, entries: Mapping[str, np.ndarray]) -> None:
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in entries.items():
            entry: str | zipfile.ZipInfo = f"{name}.npy"  # a name takes the archive's deflate at level 1
            if not _deflates_well(array):
                entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))  # ZIP_STORED
            with archive.open(entry, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(array), allow_pickle=False)


def _deflates_well(array: np.ndarray) -> bool:
    sample = memoryview(np.ascontiguousarray(array.reshape(-1)[: max(SAMPLE_BYTES // max(array.itemsize, 1), 1)]))
    raw = sample.cast("B") if sample.nbytes else b""
    return bool(raw) and len(zlib.compress(raw, 1)) <= WORTH_IT * len(raw)
