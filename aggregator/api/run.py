"""GET /api/v1/run/{branch_id}: the run status a leaf checks before it uploads."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from aggregator.api.deps import Context, CurrentLeaf, require_branch

router = APIRouter()


@router.get("/api/v1/run/{branch_id}")
async def get_run(branch_id: str, leaf: CurrentLeaf, context: Context) -> dict:
    require_branch(leaf, branch_id)
    branch = await run_in_threadpool(context.registry.branch, branch_id)
    return {"data": {"run_status": branch.run_status, "run_number": branch.run_number}}
