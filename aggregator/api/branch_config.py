"""GET /api/v1/config/branch/{branch_id}: the branch's configuration as the client reads it."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from aggregator.api.deps import Context, CurrentLeaf, require_branch

router = APIRouter()


@router.get("/api/v1/config/branch/{branch_id}")
async def get_branch_config(branch_id: str, leaf: CurrentLeaf, context: Context) -> dict:
    require_branch(leaf, branch_id)
    branch = await run_in_threadpool(context.registry.branch, branch_id)
    round_number, uploaded = await run_in_threadpool(context.service.open_round, branch_id)
    leaves = await run_in_threadpool(context.registry.leaves, branch_id)
    finished = await run_in_threadpool(context.reports.finished_aggregations, branch_id)
    return {
        "data": {
            "branch": {
                "id": branch.id,
                "name": branch.name,
                "tree_id": branch.tree_id,
                "aggregation_target": branch.aggregation_target,
            },
            "service": {
                "algorithm": "fedavg",
                "config": {
                    "analytics_ops": branch.analytics_ops,
                    "analytics_default_op": branch.analytics_default_op,
                    "round_timeout_s": branch.round_timeout_s,
                    "min_leaves": branch.min_leaves,
                    "max_weight_share": branch.max_weight_share,
                },
                "open_aggregation": {
                    "round": round_number,
                    "uploaded": sorted(leaf.name for leaf in leaves if leaf.id in uploaded),
                    "waiting_for": sorted(leaf.name for leaf in leaves if leaf.id not in uploaded),
                },
                # a fedgrove extension the official client ignores: a resuming leaf finds what it missed here
                "finished_aggregations": finished,
            },
            "model_config": branch.model_config_json,
            "created_at": branch.created_at.isoformat(),
            "updated_at": branch.created_at.isoformat(),
        }
    }
