"""The leaves' reported performance (`POST /api/v1/performance/analysis`), stored per branch and read back
by the admin."""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from aggregator.json_values import MAX_DEPTH, is_text, nesting_depth
from aggregator.db import PerformanceRecord


class MetricsStore:
    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def add(self, *, branch_id: str, leaf_id: str, aggregation_id: str, mode: str, data: str) -> int:
        """Store one report; returns its id."""
        record = PerformanceRecord(
            branch_id=branch_id, leaf_id=leaf_id, aggregation_id=aggregation_id, mode=mode, data=data
        )
        with self._sessions() as session:
            session.add(record)
            session.commit()
            return record.id

    def for_branch(self, branch_id: str) -> list[dict]:
        """Every report of the branch, oldest first."""
        with self._sessions() as session:
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
