"""What the blob store keeps, so that it does not grow without bound.

* Aggregates: a branch's newest `keep_aggregates` (0: all), and any that is a leaf's newest and not yet
  downloaded by it (a leaf reconnecting is sent exactly that one). An older one is deleted and its
  aggregation marked `expired`; asking for it is 410.
* Uploads: until their round is finished, and those of the branch's newest finished round after it (a leaf
  may send one again after a lost 201: see `resends`); all of them with `keep_uploads` (an audit trail).
  Set-aside uploads are kept.
* At start-up, before any request: every blob of the server's own (a uuid hex key) that the database does
  not account for (stored, then the process died before its row was committed), and every temporary file of
  an interrupted write. A key of another shape is never the server's: a store shared with other files
  (`s3://bucket` with a model beside) keeps them.
"""

from __future__ import annotations

import logging
import re

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import sessionmaker

from aggregator.blobstore import BlobStore
from aggregator.db import Aggregation, Contribution, Delivery
from aggregator.statuses import AggregationStatus

logger = logging.getLogger(__name__)
COMPLETE = AggregationStatus.COMPLETE
_SERVER_KEY = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: every upload's and aggregate's key


class Retention:
    def __init__(self, *, sessions: sessionmaker, blobs: BlobStore, keep_aggregates: int, keep_uploads: bool) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._keep_aggregates = keep_aggregates
        self._keep_uploads = keep_uploads

    def after_finish(self, branch_id: str, finished_round: int) -> None:
        """Apply the policy once round `finished_round` of the branch is finished: expire the aggregates it
        no longer keeps, delete the uploads of the finished round before it."""
        with self._sessions() as session:
            complete = list(session.scalars(
                select(Aggregation.id).where(Aggregation.branch_id == branch_id, Aggregation.status == COMPLETE)
                .order_by(Aggregation.round.desc())
            ))
            older = complete[self._keep_aggregates :] if self._keep_aggregates else []
            owed = set(session.scalars(self._owed(branch_id))) if older else set()
            expiring = [aggregation_id for aggregation_id in older if aggregation_id not in owed]
            if expiring:
                session.execute(update(Aggregation).where(Aggregation.id.in_(expiring))
                                .values(status=AggregationStatus.EXPIRED))
            before = session.scalar(
                select(Aggregation.id).where(
                    Aggregation.branch_id == branch_id, Aggregation.round < finished_round,
                    Aggregation.status.in_((COMPLETE, AggregationStatus.EXPIRED)),
                ).order_by(Aggregation.round.desc()).limit(1)
            )
            uploads = [] if self._keep_uploads else list(
                session.scalars(select(Contribution.id).where(Contribution.aggregation_id == before))
            )
            session.commit()
        for key in [*expiring, *uploads]:  # rows first: a crash in between leaves an orphan, swept at start-up
            self._blobs.delete(key)

    @staticmethod
    def _owed(branch_id: str):  # type: ignore[no-untyped-def]
        """The aggregates of the branch that are some leaf's newest and that it has not downloaded."""
        newest = (
            select(Contribution.leaf_id, func.max(Aggregation.round).label("round"))
            .join(Aggregation, Aggregation.id == Contribution.aggregation_id)
            .where(Aggregation.branch_id == branch_id, Aggregation.status == COMPLETE)
            .group_by(Contribution.leaf_id)
            .subquery()
        )
        downloaded = exists().where(Delivery.leaf_id == newest.c.leaf_id, Delivery.aggregation_id == Aggregation.id)
        return (
            select(Aggregation.id)
            .join(newest, newest.c.round == Aggregation.round)
            .where(Aggregation.branch_id == branch_id, ~downloaded)
        )

    def sweep(self) -> int:
        """Delete every blob the database does not account for, and interrupted writes' temporary files;
        returns how many. Only at start-up: an upload being taken has its blob before its row."""
        with self._sessions() as session:
            newest_complete = (
                select(Aggregation.branch_id, func.max(Aggregation.round).label("round"))
                .where(Aggregation.status == COMPLETE)
                .group_by(Aggregation.branch_id)
                .subquery()
            )
            kept_rounds = select(Aggregation.id).where(
                Aggregation.status.in_((AggregationStatus.OPEN, AggregationStatus.SET_ASIDE))
            ).union(
                select(Aggregation.id).join(newest_complete, (newest_complete.c.branch_id == Aggregation.branch_id)
                                            & (newest_complete.c.round == Aggregation.round))
            )
            uploads = select(Contribution.id)
            if not self._keep_uploads:
                uploads = uploads.where(Contribution.aggregation_id.in_(kept_rounds))
            referenced = set(session.scalars(uploads))
            referenced |= set(session.scalars(select(Aggregation.id).where(Aggregation.status == COMPLETE)))
        orphans = [key for key in self._blobs.keys() if _SERVER_KEY.fullmatch(key) and key not in referenced]
        for key in orphans:
            self._blobs.delete(key)
        swept = len(orphans) + self._blobs.clear_interrupted()
        if swept:
            logger.info("deleted %d blob(s) that no row accounts for, left by an earlier run", swept)
        return swept
