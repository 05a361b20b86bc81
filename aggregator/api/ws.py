"""WebSocket notifications: a ticket request over HTTP, then a socket the server pushes JSON frames on."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from aggregator.api.deps import Context, CurrentLeaf
from aggregator.api.context import ServerContext
from aggregator.inbound_allowance import InboundAllowance
from aggregator.notifier import Connection
from aggregator.registry import LeafIdentity

router = APIRouter()


@router.post("/api/v1/ws/ticket")
async def issue_ticket(leaf: CurrentLeaf, context: Context) -> dict:
    ticket_id, ticket = context.tickets.issue(leaf_id=leaf.id, branch_id=leaf.branch_id)
    expires_at = datetime.fromtimestamp(ticket.expires_at, UTC).isoformat()
    return {"data": {"ticket_id": ticket_id, "request_id": ticket.request_id, "expires_at": expires_at}}


@router.websocket("/api/v1/ws")
async def notifications(websocket: WebSocket, ticket: str = "", request_id: str = "") -> None:
    context: ServerContext = websocket.app.state.context
    redeemed = context.tickets.redeem(ticket, request_id)
    if redeemed is None:
        await websocket.close(code=4401, reason="invalid or expired ticket")
        return
    await websocket.accept()
    connection = Connection(leaf_id=redeemed.leaf_id, websocket=websocket)
    for superseded in context.connections.add(redeemed.branch_id, connection):
        await superseded.close(code=1008, reason=f"replaced by a newer connection of this leaf (at most "
                                                 f"{context.settings.websockets_per_leaf} at once)")
    allowance = InboundAllowance()
    try:
        leaf = LeafIdentity(redeemed.leaf_id, "", redeemed.branch_id, "", "")
        pending = await run_in_threadpool(context.service.pending_for, leaf)
        if pending is not None:
            await context.connections.send_aggregation(connection, pending)
        # Leaves have nothing to say: whatever they send, text or binary, is read and dropped until they go,
        # or until they send more than a few.
        while (await websocket.receive())["type"] != "websocket.disconnect":
            if not allowance.take(time.monotonic()):
                await connection.close(code=1008, reason="too many messages: leaves need not send any")
                break
    except WebSocketDisconnect:
        pass
    finally:
        context.connections.remove(redeemed.branch_id, connection)

