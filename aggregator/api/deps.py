"""FastAPI dependencies: the server context, the authenticated leaf, the admin check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from aggregator.api.context import ServerContext
from aggregator.errors import Forbidden, Unauthorized
from aggregator.registry import LeafIdentity


async def get_context(request: Request) -> ServerContext:
    # async: FastAPI runs a plain `def` dependency in a worker thread, a hop for every request.
    return request.app.state.context


Context = Annotated[ServerContext, Depends(get_context)]


async def current_leaf(context: Context, authorization: Annotated[str | None, Header()] = None) -> LeafIdentity:
    # A leaf seen before is checked here (a hash and a dict lookup); only a first sight reads the database.
    known = context.registry.authenticate_known(authorization)
    return known if known is not None else await run_in_threadpool(context.registry.authenticate, authorization)


CurrentLeaf = Annotated[LeafIdentity, Depends(current_leaf)]


def require_branch(leaf: LeafIdentity, branch_id: str) -> None:
    if leaf.branch_id != branch_id:
        raise Forbidden(f"leaf does not belong to branch {branch_id[:64]}")


async def require_admin(context: Context, authorization: Annotated[str | None, Header()] = None) -> None:
    if not authorization:
        raise Unauthorized("missing credentials")
    scheme, _, token = authorization.partition(" ")
    presented = token.strip().encode("utf-8", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented, context.admin_token.encode()):
        raise Unauthorized("invalid credentials")


AdminOnly = Depends(require_admin)
