"""What `fedgrove branch status` shows of a branch: its settings, its open round and its history."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from aggregator.db import Aggregation, Leaf
from aggregator.registry import Registry
from aggregator.rounds import AggregationService
from aggregator.statuses import AggregationStatus


FINISHED = (AggregationStatus.COMPLETE, AggregationStatus.EXPIRED)  # expired: its aggregate deleted since


class BranchReports:
    def __init__(self, *, sessions: sessionmaker, registry: Registry, service: AggregationService) -> None:
        self._sessions = sessions
        self._registry = registry
        self._service = service

    def status(self, branch_id: str, *, connected_leaf_ids: set[str]) -> dict:
        """The branch's status for the admin; `connected_leaf_ids` are the leaves with a WebSocket open."""
        branch = self._registry.branch(branch_id)
        round_number, uploaded = self._service.open_round(branch_id)
        with self._sessions() as session:
            completed = list(
                session.scalars(
                    select(Aggregation)
                    .where(Aggregation.branch_id == branch_id, Aggregation.status.in_(FINISHED))
                    .order_by(Aggregation.round)
                )
            )
        leaves = self._registry.leaves(branch_id)
        damaged = self._service.damaged(branch_id)
        return {
            "branch_id": branch.id,
            "name": branch.name,
            "tree_id": branch.tree_id,
            "aggregation_target": branch.aggregation_target,
            "run_status": branch.run_status,
            "run_number": branch.run_number,
            "open_round": round_number,
            "uploads_in_open_aggregation": len(uploaded),
            "uploaded_leaves": self._leaf_names(uploaded),
            "aggregations_completed": len(completed),
            "last_aggregation_id": completed[-1].id if completed else None,
            "leaves": [leaf.name for leaf in leaves],
            "leaves_connected": sorted(leaf.name for leaf in leaves if leaf.id in connected_leaf_ids),
            # set while the open round cannot be rebuilt from its uploads; `stop` sets it aside
            "damaged_round": None if damaged is None else {"round": damaged.round, "reason": damaged.reason},
        }

    def finished_aggregations(self, branch_id: str) -> list[str]:
        """The ids of the branch's finished aggregations, oldest first: what a resuming leaf reads to find the
        aggregates it missed after the last one it loaded."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(Aggregation.id)
                    .where(Aggregation.branch_id == branch_id, Aggregation.status.in_(FINISHED))
                    .order_by(Aggregation.round)
                )
            )

    def _leaf_names(self, leaf_ids: list[str]) -> list[str]:
        if not leaf_ids:
            return []
        with self._sessions() as session:
            return sorted(session.scalars(select(Leaf.name).where(Leaf.id.in_(leaf_ids))))
