"""Setting a stopped run's uploads aside: kept, rows and blobs, but never averaged.

When a run is stopped, the uploads in the open aggregation belong to the run that ended, and the next run (a
`start` after `stop` is a new run number) must not average them into its first aggregate.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import sessionmaker

from aggregator.db import Aggregation
from aggregator.round_state import OpenAggregation
from aggregator.statuses import AggregationStatus


def set_aside(sessions: sessionmaker, *, branch_id: str, state: OpenAggregation) -> OpenAggregation:
    """Mark `state`'s aggregation set aside and open the next round; returns the new open aggregation."""
    next_state = OpenAggregation(id=uuid.uuid4().hex, round=state.round + 1)  # (branch, round) is unique
    with sessions() as session:
        row = session.get(Aggregation, state.id)
        row.status = AggregationStatus.SET_ASIDE
        row.contributors = len(state.contributors)
        session.add(Aggregation(id=next_state.id, branch_id=branch_id, round=next_state.round))
        session.commit()
    return next_state
