"""The leaves' reported performance (`POST /api/v1/performance/analysis`), stored per branch and read back
by the admin a page at a time.

Each leaf has a quota of stored report bytes: without one, a leaf could fill the database with 1 MB rows and
make the admin's read of them take minutes and gigabytes.
"""

from __future__ import annotations

import json
import threading

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.db import MetricsUsage, PerformanceRecord
from aggregator.errors import PayloadTooLarge
from aggregator.json_values import MAX_DEPTH, is_text, nesting_depth

PAGE_DATA_BYTES = 4 * 1024 * 1024  # a page ends after the row that takes it past this much data


class MetricsStore:
    def __init__(self, sessions: sessionmaker, *, max_bytes_per_leaf: int) -> None:
        self._sessions = sessions
        self._max_bytes_per_leaf = max_bytes_per_leaf
        self._adding = threading.Lock()  # a leaf's usage is read and raised in one step

    def add(self, *, branch_id: str, leaf_id: str, aggregation_id: str, mode: str, data: str) -> int:
        """Store one report; returns its id. PayloadTooLarge past the leaf's quota."""
        size = len(data.encode("utf-8"))
        with self._adding, self._sessions() as session:
            usage = session.get(MetricsUsage, leaf_id) or _counted_usage(session, leaf_id)
            if usage.data_bytes + size > self._max_bytes_per_leaf:
                raise PayloadTooLarge(
                    f"expected at most {self._max_bytes_per_leaf} bytes of metrics per leaf, got "
                    f"{usage.data_bytes + size} (fix: report fewer or smaller metrics, or raise "
                    "FEDGROVE_MAX_METRICS_BYTES_PER_LEAF on the server)"
                )
            usage.reports += 1
            usage.data_bytes += size
            record = PerformanceRecord(
                branch_id=branch_id, leaf_id=leaf_id, aggregation_id=aggregation_id, mode=mode, data=data
            )
            session.add(record)
            session.commit()
            return record.id

    def page(self, branch_id: str, *, after: int, limit: int) -> tuple[list[dict], int | None]:
        """The branch's reports with an id above `after`, oldest first: at most `limit`, and no more once they
        hold `PAGE_DATA_BYTES`; and the `after` of the next page (None after the last)."""
        rows: list[dict] = []
        with self._sessions() as session:
            found = session.scalars(
                select(PerformanceRecord)
                .where(PerformanceRecord.branch_id == branch_id, PerformanceRecord.id > after)
                .order_by(PerformanceRecord.id)
                .limit(limit + 1)
            )
            data_bytes = 0
            for row in found:
                if len(rows) == limit or data_bytes >= PAGE_DATA_BYTES:
                    return rows, rows[-1]["id"]
                data_bytes += len(row.data)
                rows.append(
                    {
                        "id": row.id,
                        "leaf_id": row.leaf_id,
                        "aggregation_id": row.aggregation_id,
                        "mode": row.mode,
                        "data": _parsed(row.data),
                        "created_at": row.created_at.isoformat(),
                    }
                )
        return rows, None


def _counted_usage(session: Session, leaf_id: str) -> MetricsUsage:
    """A leaf's usage, counted from its stored reports (the first time: reports stored before quotas)."""
    reports, data_bytes = session.execute(
        select(func.count(), func.coalesce(func.sum(func.length(PerformanceRecord.data)), 0))
        .where(PerformanceRecord.leaf_id == leaf_id)
    ).one()
    usage = MetricsUsage(leaf_id=leaf_id, reports=reports, data_bytes=data_bytes)
    session.add(usage)
    return usage


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
