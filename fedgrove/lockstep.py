"""Every site's side of an exchange protocol driven in one process, with the server replaced by a sum.

Why this module exists: the in-memory simulation must run exactly the protocol the leaves run through the
aggregation server, or it proves nothing. Protocols are generators that yield `(step name, fields)` and
receive the combined fields; here every site's generator is advanced in lockstep and the fields are summed
as a BranchKey server sums `_sum` fields: element-wise, in 64 bits, back in the dtype the sites sent.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

Result = TypeVar("Result")
Fields = Mapping[str, np.ndarray]


class LockstepMismatch(RuntimeError):
    """Sites yielded different steps or field sets at the same point: the protocol is not deterministic."""


def sum_fields(contributions: Sequence[Fields]) -> dict[str, np.ndarray]:
    """Element-wise sums of the sites' fields (every field present at every site, same shape and dtype)."""
    names = set(contributions[0])
    if any(set(c) != names for c in contributions):
        raise LockstepMismatch(f"expected every site to send the same fields, got {[sorted(c) for c in contributions]}")
    combined = {}
    for name in sorted(names):
        arrays = [np.asarray(c[name]) for c in contributions]
        wide = {"f": np.float64, "i": np.int64, "u": np.uint64}[arrays[0].dtype.kind]
        total = np.zeros(arrays[0].shape, dtype=wide)
        for array in arrays:
            total += array.astype(wide)
        combined[name] = total.astype(arrays[0].dtype)
    return combined


def run_in_lockstep(
    protocols: Mapping[str, Generator[tuple[str, Fields], Fields, Result]],
) -> tuple[dict[str, Result], list[str]]:
    """Drive every site's protocol to its end; returns each site's result and the steps exchanged.

    An exception raised by any site's protocol propagates (all sites derive it from the same sums)."""
    results: dict[str, Any] = {}
    steps: list[str] = []
    pending = {site: next(protocol) for site, protocol in protocols.items()}
    while pending:
        names = {name for name, _ in pending.values()}
        if len(names) != 1:
            raise LockstepMismatch(f"expected every site at the same step, got {sorted(names)}")
        steps.append(names.pop())
        combined = sum_fields([fields for _, fields in pending.values()])
        advanced = {}
        for site in pending:
            try:
                advanced[site] = protocols[site].send(combined)
            except StopIteration as finished:
                results[site] = finished.value
        if advanced and len(advanced) != len(pending):
            raise LockstepMismatch(f"expected every site to finish together, got {sorted(results)} finished")
        pending = advanced
    return results, steps
