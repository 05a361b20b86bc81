"""Aggregation rounds: take a leaf's archive, fold it into the branch's open aggregation, finish it.

One open aggregation per branch holds at most one contribution per leaf; a re-upload replaces the
earlier one (and the running sum is rebuilt from the stored archives, so the result stays exact).
An upload is durable (blob written, row committed) before `ingest` returns. The in-memory running
sum is only a cache: after a restart it is rebuilt from the database and the blob store.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import numpy as np
from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy.orm import sessionmaker

from aggregator.analytics import FieldCombiner, FieldMismatch, FieldOverflow, UnconfiguredField
from aggregator.archive import (
    FEDERATED_ANALYTICS,
    PAYLOAD_KIND_KEY,
    ParsedArchive,
    read_archive,
    read_archive_from,
    same_content,
)
from aggregator.blobstore import BlobStore
from aggregator.blobstore_errors import BlobNotFound
from aggregator.db import Aggregation, Branch, Contribution, Delivery, Leaf, utcnow
from aggregator.errors import BadRequest, Conflict, Forbidden, NotFound
from aggregator.fedavg import LayerMismatch, SumOverflow, WeightedSum
from aggregator.registry import LeafIdentity

logger = logging.getLogger(__name__)

_FILE_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
FIRST_FINISH_RETRY_S = 1.0
LAST_FINISH_RETRY_S = 60.0
SET_ASIDE = "set_aside"  # an aggregation status: uploads of a stopped run, kept but never averaged


@dataclass(frozen=True)
class Contributor:
    file_id: str
    fingerprint: str  # `ParsedArchive.fingerprint`, stored as the row's content_digest


@dataclass
class OpenAggregation:
    id: str
    round: int
    kind: str | None = None
    contributors: dict[str, Contributor] = field(default_factory=dict)
    accumulator: WeightedSum | FieldCombiner | None = None
    first_upload_at: float | None = None  # wall-clock seconds; starts the branch's round timeout


@dataclass(frozen=True)
class IngestResult:
    file_id: str
    completed_aggregation_id: str | None


class AggregationService:
    def __init__(
        self,
        *,
        sessions: sessionmaker,
        blobs: BlobStore,
        scratch_dir: Path,
        max_archive_bytes: int,
        max_archive_entries: int,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._scratch = scratch_dir
        self._scratch.mkdir(parents=True, exist_ok=True)
        self._limits = {"max_decompressed_bytes": max_archive_bytes, "max_entries": max_archive_entries}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._open: dict[str, OpenAggregation] = {}
        # branch -> leaf -> the leaf's contribution to the newest finished aggregation it took part in
        self._last_finished: dict[str, dict[str, Contributor]] = {}
        # branch -> (when to try again, the wait after that): rounds that reached their target but whose
        # aggregate could not be stored; `retry_unfinished` finishes them once the store is back.
        self._unfinished: dict[str, tuple[float, float]] = {}
        # One per ingest thread: each stores its upload while it decodes it.
        self._store_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store")

    def read(self, path: Path) -> ParsedArchive:
        return read_archive(path, **self._limits)

    def _lock(self, branch_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(branch_id, threading.Lock())

    def read_and_ingest(self, leaf: LeafIdentity, archive_path: Path, *, digest: str) -> IngestResult:
        """Decode an upload and take it. The blob store takes the file (an fsync or an S3 upload: waiting,
        not CPU, ~10 ms per 3.7 MB here) while the archive is decoded from a handle opened before; the upload
        is answered once both are done, and a refused archive is deleted from the store again. The blob is
        stored before the branch lock is taken, so uploads to one branch overlap their I/O."""
        file_id = uuid.uuid4().hex
        size = archive_path.stat().st_size
        with open(archive_path, "rb") as handle:  # readable after the store has renamed or deleted the path
            storing = self._store_pool.submit(self._blobs.move_file, file_id, archive_path)
            try:
                parsed = read_archive_from(handle, **self._limits)
            except BaseException:
                self._delete_once_stored(storing, file_id)
                raise
        storing.result()
        try:
            result = self._ingest_stored(leaf, file_id, size, parsed, digest=digest)
        except BaseException:
            if not self._committed(file_id):
                self._blobs.delete(file_id)
            raise
        if result.file_id != file_id:
            self._blobs.delete(file_id)
        return result

    def _committed(self, file_id: str) -> bool:
        """Whether the upload's row was committed before a later step failed (finishing the aggregation it
        completed, say, with the store down): its blob then belongs to the open aggregation and must stay.
        True also when the database cannot be asked: a stray blob is better than a row without one."""
        try:
            with self._sessions() as session:
                return session.get(Contribution, file_id) is not None
        except Exception:
            logger.exception("could not tell whether upload %s was committed; its blob is kept", file_id)
            return True

    def _delete_once_stored(self, storing: Future[None], file_id: str) -> None:
        try:
            storing.result()
        except Exception:
            logger.debug("storing refused upload %s failed too; nothing to delete", file_id, exc_info=True)
            return
        self._blobs.delete(file_id)

    def close(self) -> None:
        """Wait for blobs being stored; call once no upload is being taken any more."""
        self._store_pool.shutdown(wait=True)

    def _ingest_stored(
        self, leaf: LeafIdentity, file_id: str, size: int, parsed: ParsedArchive, *, digest: str
    ) -> IngestResult:
        with self._lock(leaf.branch_id):
            with self._sessions() as session:
                branch = session.get(Branch, leaf.branch_id)
            if branch is None:
                raise NotFound(f"branch {leaf.branch_id} not found")
            if branch.run_status != "start":
                raise Conflict(f"run is not started (run status: {branch.run_status})")
            state = self._state(branch)
            if leaf.id not in state.contributors:
                resent = self._resent_contribution(leaf, branch.id, parsed)
                if resent is not None:
                    logger.info("leaf %s sent its last round's archive again; answered with %s", leaf.name, resent)
                    return IngestResult(file_id=resent, completed_aggregation_id=None)
            self._check_compatible(state, parsed, branch)
            replaced = self._commit_contribution(state, leaf, file_id, parsed, size, digest)
            state.contributors[leaf.id] = Contributor(file_id, parsed.fingerprint)
            state.first_upload_at = state.first_upload_at or time.time()
            if replaced is None:
                self._fold(state, parsed, branch)
            else:
                self._rebuild(state, branch)
                self._blobs.delete(replaced)
            logger.info(
                "leaf %s uploaded %s to round %d of branch %s (%d/%d)",
                leaf.name, file_id, state.round, branch.id, len(state.contributors), branch.aggregation_target,
            )
            completed = None
            if self._complete(branch, state):
                try:
                    completed = self._finalise(branch, state)
                except Exception:
                    self._retry_later(branch.id, FIRST_FINISH_RETRY_S)
                    raise
            return IngestResult(file_id=file_id, completed_aggregation_id=completed)

    def recover(self) -> list[tuple[str, str]]:
        """Finish every open aggregation that reached its target before a crash; returns (branch, aggregation).

        Also deletes what a crash left in the scratch folder (uploads being checked, aggregates being
        written): nothing there is committed, and no request is running yet at start-up.
        """
        self._clear_scratch()
        finished = []
        with self._sessions() as session:
            branches = list(session.scalars(select(Branch)))
        for branch in branches:
            with self._lock(branch.id):
                state = self._state(branch)
                if self._complete(branch, state):
                    aggregation_id = self._finish_or_retry_later(branch, state, FIRST_FINISH_RETRY_S)
                    if aggregation_id is not None:
                        finished.append((branch.id, aggregation_id))
        return finished

    def retry_unfinished(self, now: float | None = None) -> list[tuple[str, str]]:
        """Finish the rounds that were due (target reached, or timed out with a quorum) but whose aggregate
        could not be stored (the blob store was down): their leaves are then notified without any of them
        uploading again. Returns (branch, aggregation) for each one finished; one still failing is tried
        again later, up to a minute apart."""
        now = time.time() if now is None else now
        finished = []
        for branch_id, (due_at, wait_s) in list(self._unfinished.items()):
            if now < due_at:
                continue
            with self._lock(branch_id):
                with self._sessions() as session:
                    branch = session.get(Branch, branch_id)
                state = self._open.get(branch_id)
                if branch is None or state is None or not self._due(branch, state, now):
                    self._unfinished.pop(branch_id, None)  # finished meanwhile (a leaf uploaded again)
                    continue
                aggregation_id = self._finish_or_retry_later(branch, state, min(wait_s * 2, LAST_FINISH_RETRY_S))
                if aggregation_id is not None:
                    finished.append((branch_id, aggregation_id))
        return finished

    def set_aside_open_round(self, branch_id: str) -> int:
        """When a run is stopped: the uploads in the open aggregation belong to the run that ended, and the
        next run (a `start` after `stop` is a new run number) must not average them into its first aggregate.
        They are kept, rows and blobs, in an aggregation marked `set_aside`, and a fresh one is opened.
        Returns how many uploads were set aside. A round that is due but waiting for the blob store is
        finished work, not set aside."""
        with self._lock(branch_id):
            with self._sessions() as session:
                branch = session.get(Branch, branch_id)
            if branch is None:
                raise NotFound(f"branch {branch_id} not found")
            state = self._state(branch)
            if not state.contributors or branch_id in self._unfinished:
                return 0
            next_state = OpenAggregation(id=uuid.uuid4().hex, round=state.round + 1)  # (branch, round) is unique
            with self._sessions() as session:
                row = session.get(Aggregation, state.id)
                row.status = SET_ASIDE
                row.contributors = len(state.contributors)
                session.add(Aggregation(id=next_state.id, branch_id=branch_id, round=next_state.round))
                session.commit()
            self._open[branch_id] = next_state
        logger.info("branch %s: run stopped; %d upload(s) of round %d set aside in %s",
                    branch_id, len(state.contributors), state.round, state.id)
        return len(state.contributors)

    def _finish_or_retry_later(self, branch: Branch, state: OpenAggregation, wait_s: float) -> str | None:
        """`_finalise`; or, when the aggregate cannot be stored, None and another try in `wait_s`. Call with
        the branch's lock held."""
        try:
            return self._finalise(branch, state)
        except Exception as exc:
            self._retry_later(branch.id, wait_s, exc)
            return None

    def _retry_later(self, branch_id: str, wait_s: float, error: Exception | None = None) -> None:
        """Call with the branch's lock held."""
        self._unfinished[branch_id] = (time.time() + wait_s, wait_s)
        if error is not None:
            logger.warning("branch %s: its round is due but the aggregate could not be stored (%s); trying "
                           "again in %.0f s", branch_id, error, wait_s)

    @staticmethod
    def _complete(branch: Branch, state: OpenAggregation) -> bool:
        """Whether every leaf of the branch's aggregation target has uploaded to the open aggregation."""
        return bool(state.contributors) and len(state.contributors) >= branch.aggregation_target

    @classmethod
    def _due(cls, branch: Branch, state: OpenAggregation, now: float) -> bool:
        """Whether the open aggregation is to be finished: it is `_complete`, or the branch's round timeout
        has passed since the first upload with at least `min_leaves` uploaded.

        Only model averaging times out: a federated-analytics aggregation (pooled counts, sums, Newton
        sums) over a subset of the leaves would be a different statistic, so it always waits for all."""
        if cls._complete(branch, state):
            return True
        uploaded = len(state.contributors)
        if branch.round_timeout_s is None or state.first_upload_at is None or state.kind == FEDERATED_ANALYTICS:
            return False
        quorum = branch.min_leaves or branch.aggregation_target
        return now - state.first_upload_at >= branch.round_timeout_s and uploaded >= quorum

    def _clear_scratch(self) -> None:
        leftovers = [path for path in self._scratch.iterdir() if path.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            logger.info("deleted %d scratch files left by an earlier run in %s", len(leftovers), self._scratch)

    def finalise_overdue(self, now: float | None = None) -> list[tuple[str, str]]:
        """Finish the open aggregation of every branch whose round timeout has passed since its first
        upload, if at least `min_leaves` have uploaded (else it keeps waiting, as BranchKey does); see
        `_due`. A branch whose aggregate could not be stored is left to `retry_unfinished`."""
        now = time.time() if now is None else now
        with self._sessions() as session:
            branches = list(session.scalars(select(Branch).where(Branch.round_timeout_s.is_not(None))))
        finished = []
        for branch in branches:
            if branch.id in self._unfinished:
                continue
            with self._lock(branch.id):
                state = self._state(branch)
                if not self._due(branch, state, now):
                    continue
                aggregation_id = self._finish_or_retry_later(branch, state, FIRST_FINISH_RETRY_S)
                if aggregation_id is not None:
                    finished.append((branch.id, aggregation_id))
        return finished

    def _resent_contribution(self, leaf: LeafIdentity, branch_id: str, parsed: ParsedArchive) -> str | None:
        """The leaf's contribution to the branch's last finished aggregation, if this archive repeats it: a
        retried upload whose first attempt completed that aggregation must not count in the next one.
        Fingerprints decide "different"; "the same" is confirmed array by array against the stored archive."""
        previous = self._last_finished_contributions(branch_id).get(leaf.id)
        if previous is None or previous.fingerprint != parsed.fingerprint:
            return None
        try:
            with self._blobs.open_local(previous.file_id) as path:
                earlier = self.read(path)
        except BlobNotFound:
            return None
        return previous.file_id if same_content(earlier, parsed) else None

    def _last_finished_contributions(self, branch_id: str) -> dict[str, Contributor]:
        known = self._last_finished.get(branch_id)
        if known is not None:
            return known
        finished = (Aggregation.branch_id == branch_id, Aggregation.status == "complete")
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

    def open_round(self, branch_id: str) -> tuple[int, list[str]]:
        """The open aggregation's round number and the ids of the leaves that have uploaded to it."""
        with self._sessions() as session:
            aggregation = self._open_row(session, branch_id)
            leaves = session.scalars(
                select(Contribution.leaf_id).where(Contribution.aggregation_id == aggregation.id)
            )
            return aggregation.round, sorted(leaves)

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
                    Aggregation.status == "complete",
                    ~delivered,
                )
                .order_by(Aggregation.round.desc())
                .limit(1)
            )

    def authorise_download(self, leaf: LeafIdentity, file_id: str) -> None:
        """Allow a leaf its own branch's aggregates only, and record that it has fetched this one."""
        check_file_id(file_id)
        with self._sessions() as session:
            aggregation = session.get(Aggregation, file_id)
            if aggregation is not None and aggregation.status == "complete":
                if aggregation.branch_id != leaf.branch_id:
                    raise Forbidden("file belongs to another branch")
                if session.get(Delivery, (leaf.id, file_id)) is None:
                    session.add(Delivery(leaf_id=leaf.id, aggregation_id=file_id))
                    session.commit()
                return
            if session.get(Contribution, file_id) is not None:
                raise Forbidden("only aggregates can be downloaded")
        raise NotFound("file not found")

    def is_aggregate(self, file_id: str) -> bool:
        with self._sessions() as session:
            aggregation = session.get(Aggregation, file_id)
            return aggregation is not None and aggregation.status == "complete"

    def _open_row(self, session, branch_id: str) -> Aggregation:  # type: ignore[no-untyped-def]
        row = session.scalar(
            select(Aggregation).where(Aggregation.branch_id == branch_id, Aggregation.status == "open")
        )
        if row is None:
            raise NotFound(f"branch {branch_id} has no open aggregation")
        return row

    def _state(self, branch: Branch) -> OpenAggregation:
        state = self._open.get(branch.id)
        if state is not None:
            return state
        with self._sessions() as session:
            row = self._open_row(session, branch.id)
            state = OpenAggregation(id=row.id, round=row.round)
            for contribution in session.scalars(
                select(Contribution).where(Contribution.aggregation_id == row.id).order_by(Contribution.created_at)
            ):
                state.contributors[contribution.leaf_id] = Contributor(contribution.id, contribution.content_digest)
                if state.first_upload_at is None:
                    state.first_upload_at = contribution.created_at.replace(tzinfo=UTC).timestamp()
        self._rebuild(state, branch)
        self._open[branch.id] = state
        return state

    def _rebuild(self, state: OpenAggregation, branch: Branch) -> None:
        state.accumulator = None
        for contributor in state.contributors.values():
            with self._blobs.open_local(contributor.file_id) as path:
                self._fold(state, self.read(path), branch)

    def _new_accumulator(self, parsed: ParsedArchive, branch: Branch) -> WeightedSum | FieldCombiner:
        if parsed.kind == FEDERATED_ANALYTICS:
            try:
                return FieldCombiner(
                    parsed.fields, configured=branch.analytics_ops or {}, default=branch.analytics_default_op
                )
            except (UnconfiguredField, FieldMismatch) as exc:
                raise BadRequest(str(exc)) from exc
        return WeightedSum(parsed.layers)

    def _check_compatible(self, state: OpenAggregation, parsed: ParsedArchive, branch: Branch) -> None:
        accumulator = state.accumulator
        if accumulator is None:
            accumulator = self._new_accumulator(parsed, branch)
        elif state.kind != parsed.kind:
            raise Conflict(f"archive is {parsed.kind}; the open aggregation is {state.kind}")
        try:
            if isinstance(accumulator, WeightedSum):
                accumulator.check(parsed.layers, weighting=parsed.weighting, magnitude=parsed.magnitude)
            else:
                accumulator.check(parsed.fields)
        except (LayerMismatch, FieldMismatch) as exc:
            raise Conflict(str(exc)) from exc
        except (SumOverflow, FieldOverflow) as exc:
            raise BadRequest(str(exc)) from exc

    def _fold(self, state: OpenAggregation, parsed: ParsedArchive, branch: Branch) -> None:
        if state.accumulator is None:
            state.accumulator = self._new_accumulator(parsed, branch)
            state.kind = parsed.kind
        if isinstance(state.accumulator, WeightedSum):
            state.accumulator.add(parsed.weighting, parsed.layers, magnitude=parsed.magnitude)
        else:
            state.accumulator.add(parsed.fields)

    def _commit_contribution(
        self,
        state: OpenAggregation,
        leaf: LeafIdentity,
        file_id: str,
        parsed: ParsedArchive,
        size: int,
        digest: str,
    ) -> str | None:
        # The open state mirrors the database's rows for this aggregation (both change only here, under the
        # branch lock), so it says which row a re-upload replaces without a query; the unique constraint on
        # (aggregation, leaf) would refuse a second row if they ever disagreed.
        previous = state.contributors.get(leaf.id)
        replaced = previous.file_id if previous is not None else None
        with self._sessions() as session:
            if replaced is not None:
                session.execute(delete(Contribution).where(Contribution.id == replaced))
            session.execute(
                insert(Contribution).values(
                    id=file_id,
                    aggregation_id=state.id,
                    leaf_id=leaf.id,
                    weighting=parsed.weighting,
                    size=size,
                    digest=digest,
                    content_digest=parsed.fingerprint,
                )
            )
            session.commit()
        return replaced

    def _finalise(self, branch: Branch, state: OpenAggregation) -> str:
        assert state.accumulator is not None
        if isinstance(state.accumulator, WeightedSum):
            arrays = {f"layer_{i}": layer for i, layer in enumerate(state.accumulator.mean())}
            weight_total = state.accumulator.total_weight
        else:
            arrays = dict(state.accumulator.result())
            arrays[PAYLOAD_KIND_KEY] = np.array(FEDERATED_ANALYTICS)
            weight_total = 0.0
        descriptor, name = tempfile.mkstemp(dir=self._scratch, suffix=".npz")
        scratch = Path(name)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, **arrays)
            self._blobs.move_file(state.id, scratch)
        finally:
            scratch.unlink(missing_ok=True)
        next_state = OpenAggregation(id=uuid.uuid4().hex, round=state.round + 1)
        with self._sessions() as session:
            row = session.get(Aggregation, state.id)
            row.status = "complete"
            row.kind = state.kind
            row.contributors = len(state.contributors)
            row.weight_total = weight_total
            row.completed_at = utcnow()
            leaf_ids = session.scalars(select(Leaf.id).where(Leaf.branch_id == branch.id))
            row.missing_leaves = sorted(set(leaf_ids) - set(state.contributors))
            session.add(Aggregation(id=next_state.id, branch_id=branch.id, round=next_state.round))
            session.commit()
        self._last_finished_contributions(branch.id).update(state.contributors)
        self._open[branch.id] = next_state
        self._unfinished.pop(branch.id, None)
        logger.info(
            "branch %s: round %d aggregated from %d leaves into %s",
            branch.id, state.round, len(state.contributors), state.id,
        )
        return state.id


def check_file_id(file_id: str) -> None:
    if not _FILE_ID.match(file_id):
        raise BadRequest("invalid file id")


def leaf_names(sessions: sessionmaker, leaf_ids: list[str]) -> list[str]:
    if not leaf_ids:
        return []
    with sessions() as session:
        return sorted(session.scalars(select(Leaf.name).where(Leaf.id.in_(leaf_ids))))
