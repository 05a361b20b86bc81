"""WebSocket tickets: single-use, short-lived, a few per leaf; kept in memory (a client asks anew on reconnect).

A leaf holds at most `per_leaf` live tickets: issuing one more forgets its oldest, so a reconnecting client
always gets a working ticket and a leaf asking in a loop holds a few, not millions. Tickets are kept in the
order they were issued, so expired ones are dropped from the front: issuing costs the same whatever the
number of live tickets.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Ticket:
    leaf_id: str
    branch_id: str
    request_id: str
    expires_at: float


class TicketBook:
    def __init__(self, ttl_s: int, *, per_leaf: int) -> None:
        self._ttl_s = ttl_s
        self._per_leaf = per_leaf
        self._tickets: OrderedDict[str, Ticket] = OrderedDict()  # oldest first
        self._of_leaf: dict[str, deque[str]] = {}  # leaf -> its live ticket ids, oldest first

    def issue(self, *, leaf_id: str, branch_id: str) -> tuple[str, Ticket]:
        now = time.time()
        while self._tickets and self._tickets[oldest := next(iter(self._tickets))].expires_at < now:
            self._forget(oldest)
        ticket_id = secrets.token_urlsafe(24)
        ticket = Ticket(leaf_id, branch_id, secrets.token_hex(8), now + self._ttl_s)
        self._tickets[ticket_id] = ticket
        held = self._of_leaf.setdefault(leaf_id, deque())
        held.append(ticket_id)
        while len(held) > self._per_leaf:
            self._forget(held[0])
        return ticket_id, ticket

    def redeem(self, ticket_id: str, request_id: str) -> Ticket | None:
        ticket = self._forget(ticket_id)
        if ticket is None or ticket.request_id != request_id or ticket.expires_at < time.time():
            return None
        return ticket

    def _forget(self, ticket_id: str) -> Ticket | None:
        ticket = self._tickets.pop(ticket_id, None)
        if ticket is not None:
            held = self._of_leaf[ticket.leaf_id]
            held.remove(ticket_id)
            if not held:
                del self._of_leaf[ticket.leaf_id]
        return ticket
