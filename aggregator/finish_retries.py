"""When to try again to finish a round whose aggregate could not be stored (the blob store was down).

Such a round reached its target (or timed out with a quorum): it is finished work, and its leaves are
notified once it is stored, without any of them uploading again. The first retry comes after a second, each
later one after twice the wait before, at most a minute apart.
"""

from __future__ import annotations

import time

FIRST_RETRY_S = 1.0
LAST_RETRY_S = 60.0


class FinishRetries:
    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, float]] = {}  # branch -> (when to try again, the wait before it)

    def __contains__(self, branch_id: str) -> bool:
        return branch_id in self._pending

    def schedule(self, branch_id: str, wait_s: float) -> None:
        self._pending[branch_id] = (time.time() + wait_s, wait_s)

    def due(self, now: float) -> list[tuple[str, float]]:
        """(branch, the wait to use if this try fails too) of every retry due at `now`."""
        return [
            (branch_id, min(wait_s * 2, LAST_RETRY_S))
            for branch_id, (due_at, wait_s) in list(self._pending.items())
            if now >= due_at
        ]

    def drop(self, branch_id: str) -> None:
        self._pending.pop(branch_id, None)
