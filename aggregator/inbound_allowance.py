"""How many frames a leaf may send on its WebSocket: a token bucket, so a burst is fine and a flood is not.

Leaves have nothing to say (the server only pushes; the client only answers pings, which never reach the
app), yet reading frames costs the event loop: four sockets sending small frames took /health from 3 ms to
~1 s. A socket that runs out of allowance is closed.
"""

from __future__ import annotations

BURST = 20
PER_SECOND = 1.0


class InboundAllowance:
    def __init__(self, *, burst: int = BURST, per_second: float = PER_SECOND) -> None:
        self._burst = burst
        self._per_second = per_second
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        """Spend one frame's allowance at `now` (monotonic seconds); False once it is used up."""
        if self._at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
