"""Who may download which aggregate, and which one a reconnecting leaf is still owed.

A leaf may fetch only its own branch's finished aggregates, never a raw upload. Each fetch is recorded, so
that an aggregate is sent again on a new connection only to a leaf that has not downloaded it.
"""

from __future__ import annotations

import re

from sqlalchemy import exists, insert, select
from sqlalchemy.orm import sessionmaker

from aggregator.db import Aggregation, Contribution, Delivery
from aggregator.errors import BadRequest, Forbidden, Gone, NotFound
from aggregator.registry import LeafIdentity
from aggregator.statuses import AggregationStatus

_FILE_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# Every download link asks these: plain SQL expressions on the tables, without the ORM's loading of objects.
_AGGREGATIONS = Aggregation.__table__
_DELIVERIES = Delivery.__table__


def check_file_id(file_id: str) -> None:
    if not _FILE_ID.match(file_id):
        raise BadRequest("invalid file id")


class Downloads:
    def __init__(self, sessions: sessionmaker, *, keep_aggregates: int) -> None:
        self._sessions = sessions
        self._keep_aggregates = keep_aggregates

    def authorise(self, leaf: LeafIdentity, file_id: str) -> None:
        """Allow a leaf its own branch's aggregates only, and record that it has fetched this one."""
        check_file_id(file_id)
        with self._sessions() as session:
            aggregation = session.execute(
                select(_AGGREGATIONS.c.branch_id, _AGGREGATIONS.c.status).where(_AGGREGATIONS.c.id == file_id)
            ).first()
            if aggregation is not None and aggregation.status == AggregationStatus.COMPLETE:
                if aggregation.branch_id != leaf.branch_id:
                    raise Forbidden("file belongs to another branch")
                delivered = session.execute(select(_DELIVERIES.c.leaf_id).where(
                    _DELIVERIES.c.leaf_id == leaf.id, _DELIVERIES.c.aggregation_id == file_id)).first()
                if delivered is None:
                    session.execute(insert(_DELIVERIES).values(leaf_id=leaf.id, aggregation_id=file_id))
                    session.commit()
                return
            if aggregation is not None and aggregation.status == AggregationStatus.EXPIRED:
                if aggregation.branch_id != leaf.branch_id:
                    raise Forbidden("file belongs to another branch")
                raise Gone(f"expected an aggregate the server keeps, got {file_id}, deleted: a branch keeps its last "
                           f"{self._keep_aggregates} and those a leaf has not downloaded (fix: download the newest)")
            if session.get(Contribution, file_id) is not None:
                raise Forbidden("only aggregates can be downloaded")
        raise NotFound("file not found")

    def pending_for(self, leaf: LeafIdentity) -> str | None:
        """The newest finished aggregation this leaf contributed to and has not downloaded yet."""
        with self._sessions() as session:
            delivered = exists().where(Delivery.leaf_id == leaf.id, Delivery.aggregation_id == Aggregation.id)
            return session.scalar(
                select(Aggregation.id)
                .join(Contribution, Contribution.aggregation_id == Aggregation.id)
                .where(
                    Contribution.leaf_id == leaf.id,
                    Aggregation.branch_id == leaf.branch_id,
                    Aggregation.status == AggregationStatus.COMPLETE,
                    ~delivered,
                )
                .order_by(Aggregation.round.desc())
                .limit(1)
            )
