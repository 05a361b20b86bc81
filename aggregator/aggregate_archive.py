"""Writes an aggregate as an `.npz` archive, each entry deflated when that makes it smaller.

An aggregate of layers that are mostly zeros (a sparse model, or a leaf's zero bomb) deflates to almost
nothing, one of trained float weights hardly at all, and deflating costs CPU on the round's critical path.
So each entry is sampled: up to four 16 KiB pieces, spread from its start to its end, are deflated, and
the entry is deflated (level 1, the fastest) if the sample shrinks by a tenth or more, stored as it is
otherwise. Deflating a whole MiB as the sample cost more than writing the entry (11 ms of a 12 ms write for a
100k-parameter float32 aggregate); the choice changes only the archive's size and the time to write it.
`np.load` reads either.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np
from zlib_ng import zlib_ng

PIECE_BYTES = 16 * 1024
SAMPLE_PIECES = 4
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
    raw = _sample(array)
    return bool(raw) and len(zlib_ng.compress(raw, 1)) <= WORTH_IT * len(raw)


def _sample(array: np.ndarray) -> bytes:
    """The entry's bytes if they fit in the sample, else SAMPLE_PIECES pieces spread from its start to its end."""
    flat = array.reshape(-1)
    per_piece = max(PIECE_BYTES // max(array.itemsize, 1), 1)
    if flat.size <= per_piece * SAMPLE_PIECES:
        return np.ascontiguousarray(flat).tobytes()
    starts = np.linspace(0, flat.size - per_piece, SAMPLE_PIECES).astype(np.int64)
    return b"".join(np.ascontiguousarray(flat[start : start + per_piece]).tobytes() for start in starts)
