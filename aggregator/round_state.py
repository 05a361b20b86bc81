"""The open aggregation of each branch in memory: who has uploaded, and the running aggregate.

The database and the blob store are the truth; this is a cache of them. A branch's state is loaded on first
use (after a start or a restart) by reading its open aggregation's rows and folding every stored upload in
again, so the running aggregate after a crash is the one before it. A round whose uploads cannot be read
back (a lost or corrupt blob, the store down) is `damaged`: it raises `RoundDamaged` until it loads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aggregator.accumulators import Accumulator, new_accumulator
from aggregator.archive import ParsedArchive
from aggregator.blobstore_errors import BlobNotFound
from aggregator.db import Aggregation, Branch, Contribution
from aggregator.errors import NotFound, ServiceUnavailable
from aggregator.statuses import AggregationStatus
from aggregator.stored_archives import StoredArchives
from fedgrove_common.protocol import FEDERATED_ANALYTICS


@dataclass(frozen=True)
class Contributor:
    file_id: str
    fingerprint: str  # `ParsedArchive.fingerprint`, stored as the row's content_digest
    weighting: float


@dataclass
class OpenAggregation:
    id: str
    round: int
    contributors: dict[str, Contributor] = field(default_factory=dict)  # leaf id -> its upload
    accumulator: Accumulator | None = None
    first_upload_at: float | None = None  # wall-clock seconds; starts the branch's round timeout

    @property
    def kind(self) -> str | None:
        return None if self.accumulator is None else self.accumulator.kind

    def complete(self, branch: Branch) -> bool:
        """Whether every leaf of the branch's aggregation target has uploaded."""
        return bool(self.contributors) and len(self.contributors) >= branch.aggregation_target

    def due(self, branch: Branch, now: float) -> bool:
        """Whether it is to be finished: `complete`, or the branch's round timeout has passed since the first
        upload with at least `min_leaves` uploaded.

        Only model averaging times out: a federated-analytics aggregation (pooled counts, sums, Newton
        sums) over a subset of the leaves would be a different statistic, so it always waits for all."""
        if self.complete(branch):
            return True
        if branch.round_timeout_s is None or self.first_upload_at is None or self.kind == FEDERATED_ANALYTICS:
            return False
        quorum = branch.min_leaves or branch.aggregation_target
        return now - self.first_upload_at >= branch.round_timeout_s and len(self.contributors) >= quorum

    def check(self, archive: ParsedArchive, branch: Branch) -> None:
        """Conflict or BadRequest if `archive` cannot join this aggregation."""
        accumulator = self.accumulator if self.accumulator is not None else new_accumulator(archive, branch)
        accumulator.check(archive)

    def fold(self, archive: ParsedArchive, branch: Branch) -> None:
        if self.accumulator is None:
            self.accumulator = new_accumulator(archive, branch)
        self.accumulator.add(archive)

    def took_upload(self) -> None:
        self.first_upload_at = self.first_upload_at or time.time()


@dataclass(frozen=True)
class DamagedRound:
    round: int
    reason: str  # for the operator: names the upload and the blob store's or the reader's error


class RoundDamaged(ServiceUnavailable):
    """A branch's open round cannot be rebuilt from its uploads; a leaf is told to try again later."""

    def __init__(self, damage: DamagedRound) -> None:
        super().__init__("the branch's open round cannot be read from the blob store; try again later")
        self.damage = damage


class RoundStates:
    """Each branch's `OpenAggregation`, loaded from the database and the blob store on first use. Call every
    method but `open_round` with the branch's lock held."""

    def __init__(self, *, sessions: sessionmaker, archives: StoredArchives) -> None:
        self._sessions = sessions
        self._archives = archives
        self._open: dict[str, OpenAggregation] = {}
        self._damaged: dict[str, DamagedRound] = {}

    def get(self, branch: Branch) -> OpenAggregation:
        """The branch's open round; RoundDamaged if its uploads cannot be folded in again."""
        state = self._open.get(branch.id)
        if state is None:
            state = self.rows(branch)
            try:
                self.rebuild(state, branch)
            except Exception as exc:  # the store's, the reader's or the accumulator's error: all say "unreadable"
                self._damaged[branch.id] = DamagedRound(state.round, f"{type(exc).__name__}: {exc}")
                raise RoundDamaged(self._damaged[branch.id]) from exc
            self._damaged.pop(branch.id, None)
            self._open[branch.id] = state
        return state

    def damaged(self, branch_id: str) -> DamagedRound | None:
        return self._damaged.get(branch_id)

    def cached(self, branch_id: str) -> OpenAggregation | None:
        return self._open.get(branch_id)

    def replace(self, branch_id: str, state: OpenAggregation) -> None:
        """Make `state` the branch's open aggregation (the old one was finished or set aside)."""
        self._open[branch_id] = state
        self._damaged.pop(branch_id, None)

    def replace_upload(self, state: OpenAggregation, branch: Branch, *, replaced: str, new: ParsedArchive) -> None:
        """Swap the upload `replaced` for `new` in the running aggregate (`state.contributors` already names
        the new one): see `take_out`."""
        if self.take_out(state, branch, replaced):
            state.fold(new, branch)

    def take_out(self, state: OpenAggregation, branch: Branch, file_id: str) -> bool:
        """Take the upload `file_id` (no longer in `state.contributors`) out of the running aggregate: only its
        archive is read again, unless it cannot be taken out exactly enough or cannot be read; then every
        stored upload is folded in again, and False is returned (the aggregate is complete as it is)."""
        assert state.accumulator is not None
        try:
            if state.accumulator.remove(self._archives.read(file_id)):
                return True
        except BlobNotFound:
            pass
        self.rebuild(state, branch)
        return False

    def rebuild(self, state: OpenAggregation, branch: Branch) -> None:
        """Fold every stored upload of `state` in again, from an empty accumulator."""
        state.accumulator = None
        for contributor in state.contributors.values():
            state.fold(self._archives.read(contributor.file_id), branch)

    def rows(self, branch: Branch) -> OpenAggregation:
        """The branch's open round as the database has it, without its running aggregate."""
        with self._sessions() as session:
            row = open_row(session, branch.id)
            state = OpenAggregation(id=row.id, round=row.round)
            for contribution in session.scalars(
                select(Contribution).where(Contribution.aggregation_id == row.id).order_by(Contribution.created_at)
            ):
                state.contributors[contribution.leaf_id] = Contributor(
                    contribution.id, contribution.content_digest, contribution.weighting
                )
                if state.first_upload_at is None:
                    state.first_upload_at = contribution.created_at.replace(tzinfo=UTC).timestamp()
        return state

    def open_round(self, branch_id: str) -> tuple[int, list[str]]:
        """The open aggregation's round number and the ids of the leaves that have uploaded to it."""
        with self._sessions() as session:
            aggregation = open_row(session, branch_id)
            leaves = session.scalars(
                select(Contribution.leaf_id).where(Contribution.aggregation_id == aggregation.id)
            )
            return aggregation.round, sorted(leaves)


def open_row(session: Session, branch_id: str) -> Aggregation:
    row = session.scalar(
        select(Aggregation).where(Aggregation.branch_id == branch_id, Aggregation.status == AggregationStatus.OPEN)
    )
    if row is None:
        raise NotFound(f"branch {branch_id} has no open aggregation")
    return row
