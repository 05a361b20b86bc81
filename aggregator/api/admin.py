"""The admin API behind `fedgrove branch ...` and `fedgrove run ...`: what the BranchKey dashboard does."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from aggregator.api.deps import AdminOnly, Context
from aggregator.api.json_body import MAX_DEPTH, is_text, json_body, nesting_depth
from aggregator.db import Aggregation, PerformanceRecord
from aggregator.rounds import leaf_names

# Bodies come from `json_body`, not from body-model parameters: those FastAPI reads before the admin check.
router = APIRouter(prefix="/admin/v1", dependencies=[AdminOnly])


class CreateBranch(BaseModel):
    tree: str = Field(min_length=1, max_length=200)
    branch: str = Field(min_length=1, max_length=200)
    leaves: int = Field(ge=1, le=10_000)
    target: int | None = None
    leaf_names: list[str] | None = None
    analytics_ops: dict[str, str] | None = None
    analytics_default_op: str | None = None
    model_config_data: dict | None = Field(default=None, alias="model_config")
    round_timeout_s: float | None = Field(default=None, gt=0)
    min_leaves: int | None = Field(default=None, ge=1)


class RunStatusChange(BaseModel):
    status: Literal["start", "pause", "stop"]


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
        )
    )
    return {"tree_id": tree_id, "branch_id": branch_id, "leaves": [vars(c) for c in credentials]}


@router.get("/branches/{branch_id}")
async def branch_status(branch_id: str, context: Context) -> dict:
    def read() -> dict:
        branch = context.registry.branch(branch_id)
        round_number, uploaded = context.service.open_round(branch_id)
        with context.sessions() as session:
            completed = list(
                session.scalars(
                    select(Aggregation)
                    .where(Aggregation.branch_id == branch_id, Aggregation.status == "complete")
                    .order_by(Aggregation.round)
                )
            )
        leaves = context.registry.leaves(branch_id)
        connected = context.connections.connected_leaves(branch_id)
        return {
            "branch_id": branch.id,
            "name": branch.name,
            "tree_id": branch.tree_id,
            "aggregation_target": branch.aggregation_target,
            "run_status": branch.run_status,
            "run_number": branch.run_number,
            "open_round": round_number,
            "uploads_in_open_aggregation": len(uploaded),
            "uploaded_leaves": leaf_names(context.sessions, uploaded),
            "aggregations_completed": len(completed),
            "last_aggregation_id": completed[-1].id if completed else None,
            "leaves": [leaf.name for leaf in leaves],
            "leaves_connected": sorted(leaf.name for leaf in leaves if leaf.id in connected),
        }

    return await run_in_threadpool(read)


@router.post("/branches/{branch_id}/run")
async def change_run_status(
    branch_id: str, change: Annotated[RunStatusChange, Depends(json_body(RunStatusChange))], context: Context
) -> dict:
    branch = await run_in_threadpool(context.registry.set_run_status, branch_id, change.status)
    if change.status == "stop":
        await run_in_threadpool(context.service.set_aside_open_round, branch_id)
    await context.connections.notify_run_status(branch_id, change.status)
    return {"run_status": branch.run_status, "run_number": branch.run_number}


@router.get("/branches/{branch_id}/metrics")
async def branch_metrics(branch_id: str, context: Context) -> dict:
    def read() -> list[dict]:
        context.registry.branch(branch_id)
        with context.sessions() as session:
            rows = session.scalars(
                select(PerformanceRecord)
                .where(PerformanceRecord.branch_id == branch_id)
                .order_by(PerformanceRecord.id)
            )
            return [
                {
                    "leaf_id": row.leaf_id,
                    "aggregation_id": row.aggregation_id,
                    "mode": row.mode,
                    "data": _parsed(row.data),
                    "created_at": row.created_at.isoformat(),
                }
                for row in rows
            ]

    return {"metrics": await run_in_threadpool(read)}


def _parsed(data: str) -> object:
    """A leaf's reported metrics as JSON when they are JSON of sane depth and text, else the text as sent (rows
    stored before lone surrogates were refused may hold "\\ud800" escapes)."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return data
    if nesting_depth(parsed) > MAX_DEPTH or not is_text(json.dumps(parsed, ensure_ascii=False)):
        return data
    return parsed
