"""WebSocket connections per branch, and the notifications pushed over them.

Each aggregation is sent to a connection at most once: the official client's queue holds one id and
blocks its consumer on a second, so a duplicate would surface later as a stale id.

A leaf holds at most `per_leaf` connections: a new one closes the oldest (1008, with the reason), not the
other way round, so a leaf reconnecting before the server noticed its old socket die is never shut out.
"""

from __future__ import annotations

import asyncio
import json
import logging
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


    async def close(self, *, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code=code, reason=reason)
        except Exception as exc:  # closing already
            logger.debug("closing the socket of leaf %s: %s", self.leaf_id, exc)


class ConnectionManager:
    def __init__(self, *, per_leaf: int) -> None:
        self._per_leaf = per_leaf
        self._branches: dict[str, set[Connection]] = {}
        self._of_leaf: dict[str, list[Connection]] = {}  # oldest first

    def add(self, branch_id: str, connection: Connection) -> list[Connection]:
        """Serve `connection`; returns the leaf's oldest connections past its cap, for the caller to close."""
        self._branches.setdefault(branch_id, set()).add(connection)
        held = self._of_leaf.setdefault(connection.leaf_id, [])
        held.append(connection)
        superseded = held[: max(len(held) - self._per_leaf, 0)]
        for old in superseded:
            self.remove(branch_id, old)
        return superseded

    def remove(self, branch_id: str, connection: Connection) -> None:
        self._branches.get(branch_id, set()).discard(connection)
        held = self._of_leaf.get(connection.leaf_id, [])
        if connection in held:
            held.remove(connection)
        if not held:
            self._of_leaf.pop(connection.leaf_id, None)

    def of_leaf(self, leaf_id: str) -> list[Connection]:
        return list(self._of_leaf.get(leaf_id, []))

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
