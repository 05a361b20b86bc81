"""Recognises a leaf sending its last round's archive again, so that it is answered and not counted twice.

A leaf whose upload completed a round may never see the 201 (a lost response, a task retried after it) and
send the same archive again, by then into the next round. That archive is answered with the original file id
and not counted in the round it now lands in.

It is such a retry only while the leaf has not downloaded the aggregate it contributed to, and only for the
branch's newest finished round: a leaf that has fetched the aggregate has moved on, so the same archive from
it is new data (an analytics count that did not change, say) and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from aggregator.archive import ParsedArchive, same_content
from aggregator.blobstore_errors import BlobNotFound
from aggregator.db import Aggregation, Contribution, Delivery
from aggregator.registry import LeafIdentity
from aggregator.round_state import Contributor
from aggregator.statuses import AggregationStatus
from aggregator.stored_archives import StoredArchives


@dataclass
class _NewestFinished:
    aggregation_id: str | None
    contributors: dict[str, Contributor] = field(default_factory=dict)  # leaf id -> its upload


class ResendDetector:
    def __init__(self, *, sessions: sessionmaker, archives: StoredArchives) -> None:
        self._sessions = sessions
        self._archives = archives
        self._newest: dict[str, _NewestFinished] = {}  # branch -> its newest finished aggregation

    def resent(self, leaf: LeafIdentity, parsed: ParsedArchive) -> str | None:
        """The leaf's upload to the branch's newest finished aggregation, if this archive repeats it and the
        leaf has not downloaded that aggregate. Fingerprints decide "different"; "the same" is confirmed array
        by array against the stored archive."""
        newest = self._newest_finished(leaf.branch_id)
        previous = newest.contributors.get(leaf.id)
        if previous is None or previous.fingerprint != parsed.fingerprint:
            return None
        with self._sessions() as session:
            if session.get(Delivery, (leaf.id, newest.aggregation_id)) is not None:
                return None
        try:
            earlier = self._archives.read(previous.file_id)
        except BlobNotFound:
            return None
        return previous.file_id if same_content(earlier, parsed) else None

    def finished(self, branch_id: str, aggregation_id: str, contributors: dict[str, Contributor]) -> None:
        """Remember the aggregation of `branch_id` just finished, and who contributed what."""
        self._newest[branch_id] = _NewestFinished(aggregation_id, dict(contributors))

    def _newest_finished(self, branch_id: str) -> _NewestFinished:
        known = self._newest.get(branch_id)
        if known is not None:
            return known
        with self._sessions() as session:
            aggregation_id = session.scalar(
                select(Aggregation.id)
                .where(Aggregation.branch_id == branch_id, Aggregation.status == AggregationStatus.COMPLETE)
                .order_by(Aggregation.round.desc())
                .limit(1)
            )
            rows = session.execute(
                select(Contribution.leaf_id, Contribution.id, Contribution.content_digest, Contribution.weighting)
                .where(Contribution.aggregation_id == aggregation_id)
            )
            known = _NewestFinished(aggregation_id, {row[0]: Contributor(*row[1:]) for row in rows})
        self._newest[branch_id] = known
        return known
