"""Recognises a leaf sending its last round's archive again, so that it is answered and not counted twice.

A leaf whose upload completed a round may never see the 201 (a lost response, a task retried after it) and
send the same archive again, by then into the next round. That archive must be answered with the original
file id and not counted in the round it now lands in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from aggregator.archive import ParsedArchive, same_content
from aggregator.blobstore import BlobStore
from aggregator.blobstore_errors import BlobNotFound
from aggregator.db import Aggregation, Contribution
from aggregator.registry import LeafIdentity
from aggregator.round_state import Contributor
from aggregator.statuses import AggregationStatus


class ResendDetector:
    def __init__(
        self, *, sessions: sessionmaker, blobs: BlobStore, read: Callable[[Path], ParsedArchive]
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._read = read
        # branch -> leaf -> the leaf's contribution to the newest finished aggregation it took part in
        self._last_finished: dict[str, dict[str, Contributor]] = {}

    def resent(self, leaf: LeafIdentity, parsed: ParsedArchive) -> str | None:
        """The leaf's contribution to the branch's last finished aggregation, if this archive repeats it: a
        retried upload whose first attempt completed that aggregation must not count in the next one.
        Fingerprints decide "different"; "the same" is confirmed array by array against the stored archive."""
        previous = self._last_finished_contributions(leaf.branch_id).get(leaf.id)
        if previous is None or previous.fingerprint != parsed.fingerprint:
            return None
        try:
            with self._blobs.open_local(previous.file_id) as path:
                earlier = self._read(path)
        except BlobNotFound:
            return None
        return previous.file_id if same_content(earlier, parsed) else None

    def finished(self, branch_id: str, contributors: dict[str, Contributor]) -> None:
        """Remember what each leaf contributed to the aggregation of `branch_id` just finished."""
        self._last_finished_contributions(branch_id).update(contributors)

    def _last_finished_contributions(self, branch_id: str) -> dict[str, Contributor]:
        known = self._last_finished.get(branch_id)
        if known is not None:
            return known
        finished = (Aggregation.branch_id == branch_id, Aggregation.status == AggregationStatus.COMPLETE)
        newest = (
            select(Contribution.leaf_id, func.max(Aggregation.round).label("round"))
            .join(Aggregation, Aggregation.id == Contribution.aggregation_id)
            .where(*finished)
            .group_by(Contribution.leaf_id)
            .subquery()
        )
        with self._sessions() as session:
            rows = session.execute(
                select(Contribution.leaf_id, Contribution.id, Contribution.content_digest)
                .join(Aggregation, Aggregation.id == Contribution.aggregation_id)
                .join(newest, (newest.c.leaf_id == Contribution.leaf_id) & (newest.c.round == Aggregation.round))
                .where(*finished)
            )
            known = {leaf_id: Contributor(file_id, fingerprint) for leaf_id, file_id, fingerprint in rows}
        self._last_finished[branch_id] = known
        return known
