"""WebSocket connections per branch, and the notifications pushed over them.

Each aggregation is sent to a connection at most once: the official client's queue holds one id and
blocks its consumer on a second, so a duplicate would surface later as a stale id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

from fastapi import WebSocket

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Connection:
    leaf_id: str
    websocket: WebSocket
    sent: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message_type: str, body: dict) -> None:
        async with self.lock:
            await self.websocket.send_text(json.dumps({"message_type": message_type, "body": body}))


class ConnectionManager:
    def __init__(self) -> None:
        self._branches: dict[str, set[Connection]] = {}

    def add(self, branch_id: str, connection: Connection) -> None:
        self._branches.setdefault(branch_id, set()).add(connection)

    def remove(self, branch_id: str, connection: Connection) -> None:
        self._branches.get(branch_id, set()).discard(connection)

    def connected_leaves(self, branch_id: str) -> set[str]:
        return {connection.leaf_id for connection in self._branches.get(branch_id, set())}

    async def send_aggregation(self, connection: Connection, aggregation_id: str) -> None:
        if aggregation_id in connection.sent:
            return
        connection.sent.add(aggregation_id)
        try:
            await connection.send("aggregation_status", {"aggregation_id": aggregation_id})
        except Exception as exc:  # a closing socket; the leaf gets it again when it reconnects
            logger.info("could not notify leaf %s of %s: %s", connection.leaf_id, aggregation_id, exc)

    async def notify_aggregation(self, branch_id: str, aggregation_id: str) -> None:
        connections = list(self._branches.get(branch_id, set()))
        await asyncio.gather(*(self.send_aggregation(c, aggregation_id) for c in connections))

    async def notify_run_status(self, branch_id: str, status: str) -> None:
        async def send(connection: Connection) -> None:
            try:
                await connection.send("run_status", {"run_status": status})
            except Exception as exc:
                logger.info("could not send run status to leaf %s: %s", connection.leaf_id, exc)

        await asyncio.gather(*(send(c) for c in list(self._branches.get(branch_id, set()))))


@dataclass(frozen=True)
class Ticket:
    leaf_id: str
    branch_id: str
    request_id: str
    expires_at: float


class TicketBook:
    """Single-use, short-lived WebSocket tickets; kept in memory (a client asks anew on reconnect)."""

    def __init__(self, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        self._tickets: dict[str, Ticket] = {}

    def issue(self, *, leaf_id: str, branch_id: str) -> tuple[str, Ticket]:
        now = time.time()
        for ticket_id in [t for t, ticket in self._tickets.items() if ticket.expires_at < now]:
            del self._tickets[ticket_id]
        ticket_id = secrets.token_urlsafe(24)
        ticket = Ticket(leaf_id, branch_id, secrets.token_hex(8), now + self._ttl_s)
        self._tickets[ticket_id] = ticket
        return ticket_id, ticket

    def redeem(self, ticket_id: str, request_id: str) -> Ticket | None:
        ticket = self._tickets.pop(ticket_id, None)
        if ticket is None or ticket.request_id != request_id or ticket.expires_at < time.time():
            return None
        return ticket
