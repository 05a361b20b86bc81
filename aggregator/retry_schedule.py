"""When to try again, per branch, something that failed for want of the blob store: finishing a round whose
aggregate could not be stored, or rebuilding a round whose uploads could not be read.

Each retry waits twice as long as the one before, up to a cap: a store that is back soon is used soon, one
that stays down is not hammered.
"""

from __future__ import annotations

import time


class RetrySchedule:
    def __init__(self, *, first_s: float, last_s: float) -> None:
        self.first_s = first_s
        self._last_s = last_s
        self._pending: dict[str, tuple[float, float]] = {}  # branch -> (when to try again, the wait before it)

    def __contains__(self, branch_id: str) -> bool:
        return branch_id in self._pending

    def schedule(self, branch_id: str, wait_s: float) -> None:
        self._pending[branch_id] = (time.time() + wait_s, wait_s)

    def due(self, now: float) -> list[tuple[str, float]]:
        """(branch, the wait to use if this try fails too) of every retry due at `now`."""
        return [
            (branch_id, min(wait_s * 2, self._last_s))
            for branch_id, (due_at, wait_s) in list(self._pending.items())
            if now >= due_at
        ]

    def drop(self, branch_id: str) -> None:
        self._pending.pop(branch_id, None)
