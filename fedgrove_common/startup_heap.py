"""Keeps the objects a process made while starting out of the garbage collector's full collections.

CPython's cyclic collector walks every object it tracks at each collection of its oldest generation. A
fedgrove process imports Prefect, torch, pandas, scikit-learn or SQLAlchemy before it does any work, and what
those imports make (modules, classes, functions, Pydantic schemas) lives as long as the process. Measured with
`gc.callbacks` over one `fedgrove demo` on this project's 2-core machine, full collections took 1.05 s of the
pipeline's process (10 of them, up to 0.2 s each, 7 while it imported), 1.44 s of Prefect's temporary server
(10, 6 while it imported) and 0.11 s of the aggregator, each holding the interpreter lock while it ran.

`startup_imports()` runs a block of imports without collections, then moves everything tracked so far to the
permanent generation (`gc.freeze`): later collections skip it. `freeze_startup_objects()` is the second half
alone, for a process whose imports are already done. Garbage cycles made before the freeze are kept until
the process ends instead of being freed; the demo's peak memory (`bench/end_to_end.py`) is the measure of that.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def freeze_startup_objects() -> int:
    """Move every object the collector tracks to its permanent generation; returns how many are frozen."""
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def startup_imports() -> Iterator[None]:
    """No collection while the block runs; at its end (also when it raises), everything tracked is frozen and
    collection is on again if it was on before."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        freeze_startup_objects()
        if was_enabled:
            gc.enable()
