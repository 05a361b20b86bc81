"""POST /api/v1/performance/analysis: a leaf's metrics for an aggregation, stored per branch."""

from __future__ import annotations

import json
from functools import partial

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from aggregator.api.deps import Context, CurrentLeaf, require_branch
from aggregator.api.json_body import json_object
from aggregator.errors import BadRequest

router = APIRouter()
MODES = ("train", "test", "non-federated")


@router.post("/api/v1/performance/analysis", status_code=201)
async def post_performance(request: Request, leaf: CurrentLeaf, context: Context) -> dict:
    body = await json_object(request)
    mode = body.get("mode")
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    branch_id = body.get("branch_id")
    if branch_id in (None, ""):
        raise BadRequest("missing branch_id: send the id of the leaf's branch")
    require_branch(leaf, str(branch_id))
    data = body.get("data", "")
    if not isinstance(data, str):
        data = json.dumps(data)
    if len(data) > 1_000_000:
        raise BadRequest("data is larger than 1000000 characters")
    stored = await run_in_threadpool(
        partial(
            context.metrics.add,
            branch_id=leaf.branch_id,
            leaf_id=leaf.id,
            aggregation_id=str(body.get("aggregation_id", ""))[:64],
            mode=mode,
            data=data,
        )
    )
    return {"data": {"id": stored}}
