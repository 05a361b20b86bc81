"""The admin API behind `fedgrove branch ...` and `fedgrove run ...`: what the BranchKey dashboard does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from aggregator.api.deps import AdminOnly, Context
from aggregator.api.json_body import json_body
from aggregator.statuses import RunStatus

# Bodies come from `json_body`, not from body-model parameters: those FastAPI reads before the admin check.
router = APIRouter(prefix="/admin/v1", dependencies=[AdminOnly])
DEFAULT_PAGE = 100
MAX_PAGE = 1000


class CreateBranch(BaseModel):
    tree: str = Field(min_length=1, max_length=200)
    branch: str = Field(min_length=1, max_length=200)
    leaves: int = Field(ge=1, le=10_000)
    target: int | None = None
    leaf_names: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    analytics_ops: dict[str, str] | None = None
    analytics_default_op: str | None = None
    model_config_data: dict | None = Field(default=None, alias="model_config")
    round_timeout_s: float | None = Field(default=None, gt=0)
    min_leaves: int | None = Field(default=None, ge=1)
    max_weight_share: float | None = Field(default=None, gt=0, lt=1)


class RunStatusChange(BaseModel):
    status: RunStatus


@router.post("/branches", status_code=201)
async def create_branch(request: Annotated[CreateBranch, Depends(json_body(CreateBranch))], context: Context) -> dict:
    tree_id, branch_id, credentials = await run_in_threadpool(
        lambda: context.registry.create_branch(
            tree=request.tree,
            branch=request.branch,
            leaves=request.leaves,
            target=request.target,
            leaf_names=request.leaf_names,
            analytics_ops=request.analytics_ops,
            analytics_default_op=request.analytics_default_op,
            model_config=request.model_config_data,
            round_timeout_s=request.round_timeout_s,
            min_leaves=request.min_leaves,
            max_weight_share=request.max_weight_share,
        )
    )
    return {"tree_id": tree_id, "branch_id": branch_id, "leaves": [vars(c) for c in credentials]}


@router.get("/branches/{branch_id}")
async def branch_status(branch_id: str, context: Context) -> dict:
    connected = context.connections.connected_leaves(branch_id)
    return await run_in_threadpool(context.reports.status, branch_id, connected_leaf_ids=connected)


@router.post("/branches/{branch_id}/run")
async def change_run_status(
    branch_id: str, change: Annotated[RunStatusChange, Depends(json_body(RunStatusChange))], context: Context
) -> dict:
    branch = await run_in_threadpool(context.registry.set_run_status, branch_id, change.status)
    if change.status == RunStatus.STOP:
        await run_in_threadpool(context.service.set_aside_open_round, branch_id)
    await context.connections.notify_run_status(branch_id, change.status)
    return {"run_status": branch.run_status, "run_number": branch.run_number}


@router.get("/branches/{branch_id}/metrics")
async def branch_metrics(
    branch_id: str,
    context: Context,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> dict:
    """A page of the branch's performance reports; `next_after` is the `after` of the next one (None: done)."""

    def read() -> tuple[list[dict], int | None]:
        context.registry.branch(branch_id)
        return context.metrics.page(branch_id, after=after, limit=limit)

    rows, next_after = await run_in_threadpool(read)
    return {"metrics": rows, "next_after": next_after}
