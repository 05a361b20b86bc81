"""Finishing an aggregation: its aggregate written to the blob store (`aggregate_archive`), its row completed,
the next one opened.

The aggregate is written to the scratch folder and moved into the blob store before any row changes, so a
failure (the store down) leaves the aggregation open with every upload, to be finished again later.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from aggregator.aggregate_archive import write_aggregate
from aggregator.blobstore import BlobStore
from aggregator.db import Aggregation, Branch, Leaf, utcnow
from aggregator.round_state import OpenAggregation
from aggregator.statuses import AggregationStatus

logger = logging.getLogger(__name__)


class AggregateWriter:
    def __init__(self, *, sessions: sessionmaker, blobs: BlobStore, scratch_dir: Path) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._scratch = scratch_dir

    def finish(self, branch: Branch, state: OpenAggregation) -> OpenAggregation:
        """Store the aggregate of `state` under its id and complete its row; returns the next open aggregation."""
        assert state.accumulator is not None
        descriptor, name = tempfile.mkstemp(dir=self._scratch, suffix=".npz")
        scratch = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                write_aggregate(handle, state.accumulator.entries())
            self._blobs.move_file(state.id, scratch)
        finally:
            scratch.unlink(missing_ok=True)
        next_state = OpenAggregation(id=uuid.uuid4().hex, round=state.round + 1)
        with self._sessions() as session:
            row = session.get(Aggregation, state.id)
            row.status = AggregationStatus.COMPLETE
            row.kind = state.kind
            row.contributors = len(state.contributors)
            row.weight_total = state.accumulator.weight_total
            row.completed_at = utcnow()
            leaf_ids = session.scalars(select(Leaf.id).where(Leaf.branch_id == branch.id))
            row.missing_leaves = sorted(set(leaf_ids) - set(state.contributors))
            session.add(Aggregation(id=next_state.id, branch_id=branch.id, round=next_state.round))
            session.commit()
        return next_state

    def clear_scratch(self) -> None:
        """Delete what a crash left in the scratch folder (uploads being checked, aggregates being written):
        nothing there is committed. Call only while no request is running (at start-up)."""
        leftovers = [path for path in self._scratch.iterdir() if path.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            logger.info("deleted %d scratch files left by an earlier run in %s", len(leftovers), self._scratch)
