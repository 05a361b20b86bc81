"""Lets the server give large freed buffers back to the operating system at once.

glibc serves an allocation of at least its mmap threshold (128 KiB to start) with its own mapping, returned
to the system on free; but freeing such a block raises the threshold to the block's size (up to 32 MiB), so
the next archives' layers of that size come from the per-thread heaps and stay there after they are freed.
A fixed threshold keeps every large buffer (an archive's layers, the running sums' chunks) mapped on its
own and unmapped when freed: peak RSS for 20 uploads of 37 MB went from 317 to 290 MB (limit 3 × 40 MB +
200 MB), at no measurable cost in ingest MB/s (bench/aggregator.py, A/B in one session).
"""

from __future__ import annotations

import ctypes
import functools
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def return_large_blocks_to_the_system() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, once per process; False where the C library has no `mallopt`
    (nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded: no `find_library` subprocess
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES)
    )
    if not applied:
        logger.debug("mallopt refused the mmap threshold; large buffers follow glibc's defaults")
    return applied
