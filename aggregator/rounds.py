"""Aggregation rounds: the coordinator that puts a branch's uploads, its open round and its finishing in order.

One open aggregation per branch holds at most one contribution per leaf; a re-upload replaces the earlier
one (taken out of the running aggregate, or the round's stored archives folded in again where that would not
be exact enough). An upload is durable (blob written, row committed) before `read_and_ingest` returns; the
in-memory round state is only a cache, rebuilt after a restart from the database and the blob store.

Each job has a module of its own; this one holds the branch locks that keep them consistent: `ingest`
(storage), `round_state` (the open round, damaged rounds), `resends`, `weight_share`, `finishing` and
`retry_schedule`, `retention`, `set_aside` and `downloads`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from aggregator.archive import ParsedArchive, read_archive
from aggregator.blobstore import BlobStore
from aggregator.branch_rows import BranchRows
from aggregator.db import Branch
from aggregator.downloads import Downloads
from aggregator.errors import Conflict, NotFound
from aggregator.finishing import AggregateWriter
from aggregator.ingest import IngestResult, UploadStore
from aggregator.registry import LeafIdentity
from aggregator.resends import ResendDetector
from aggregator.retention import Retention
from aggregator.retry_schedule import RetrySchedule
from aggregator.round_state import Contributor, DamagedRound, OpenAggregation, RoundDamaged, RoundStates
from aggregator.set_aside import set_aside
from aggregator.statuses import RunStatus
from aggregator.stored_archives import StoredArchives
from aggregator.weight_share import dominating, judge_upload

logger = logging.getLogger(__name__)


class AggregationService:
    def __init__(
        self,
        *,
        sessions: sessionmaker,
        branches: BranchRows,
        blobs: BlobStore,
        scratch_dir: Path,
        max_archive_bytes: int,
        max_archive_entries: int,
        max_sum_bytes: int | None = None,
        keep_aggregates: int = 3,
        keep_uploads: bool = False,
    ) -> None:
        self._sessions = sessions
        self._branches = branches
        self._blobs = blobs
        scratch_dir.mkdir(parents=True, exist_ok=True)
        self._limits = {"max_decompressed_bytes": max_archive_bytes, "max_entries": max_archive_entries,
                        "max_sum_bytes": max_sum_bytes}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._uploads = UploadStore(sessions=sessions, blobs=blobs, limits=self._limits)
        archives = StoredArchives(blobs, self.read)
        self._rounds = RoundStates(sessions=sessions, archives=archives)
        self._resends = ResendDetector(sessions=sessions, archives=archives)
        self._writer = AggregateWriter(sessions=sessions, blobs=blobs, scratch_dir=scratch_dir)
        self._retries = RetrySchedule(first_s=1.0, last_s=60.0)  # finishing rounds whose aggregate was not stored
        self._reloads = RetrySchedule(first_s=5.0, last_s=300.0)  # rebuilding damaged rounds
        self._downloads = Downloads(sessions, keep_aggregates=keep_aggregates)
        self._retention = Retention(sessions=sessions, blobs=blobs, keep_aggregates=keep_aggregates,
                                    keep_uploads=keep_uploads)

    def read(self, path: Path) -> ParsedArchive:
        return read_archive(path, **self._limits)

    def _lock(self, branch_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(branch_id, threading.Lock())

    def _branch(self, branch_id: str) -> Branch | None:
        return self._branches.get(branch_id)

    def read_and_ingest(self, leaf: LeafIdentity, archive_path: Path, *, digest: str) -> IngestResult:
        """Decode an upload and take it into the leaf's branch's open aggregation (see `ingest`)."""
        return self._uploads.take(
            archive_path, lambda file_id, size, parsed: self._ingest_stored(leaf, file_id, size, parsed, digest=digest)
        )

    def close(self) -> None:
        """Wait for blobs being stored; call once no upload is being taken any more."""
        self._uploads.close()

    def _ingest_stored(
        self, leaf: LeafIdentity, file_id: str, size: int, parsed: ParsedArchive, *, digest: str
    ) -> IngestResult:
        with self._lock(leaf.branch_id):
            branch = self._branch(leaf.branch_id)
            if branch is None:
                raise NotFound(f"branch {leaf.branch_id} not found")
            if branch.run_status != RunStatus.START:
                raise Conflict(f"run is not started (run status: {branch.run_status})")
            state = self._state(branch)
            if leaf.id not in state.contributors:
                resent = self._resends.resent(leaf, parsed)
                if resent is not None:
                    logger.info("leaf %s sent its last round's archive again; answered with %s", leaf.name, resent)
                    return IngestResult(file_id=resent, completed_aggregation_id=None)
            state.check(parsed, branch)
            weightings = {leaf_id: contributor.weighting for leaf_id, contributor in state.contributors.items()}
            taken_out = judge_upload({**weightings, leaf.id: parsed.weighting}, leaf_id=leaf.id,
                                     limit=branch.max_weight_share, target=branch.aggregation_target)
            # The open state mirrors the database's rows for this aggregation (both change only here, under the
            # branch lock), so it says which row a re-upload replaces without a query; the unique constraint on
            # (aggregation, leaf) would refuse a second row if they ever disagreed.
            previous = state.contributors.get(leaf.id)
            replaced = previous.file_id if previous is not None else None
            self._uploads.commit(aggregation_id=state.id, leaf_id=leaf.id, file_id=file_id, parsed=parsed,
                                 size=size, digest=digest, replaced=replaced)
            state.contributors[leaf.id] = Contributor(file_id, parsed.fingerprint, parsed.weighting)
            state.took_upload()
            if replaced is None:
                state.fold(parsed, branch)
            else:
                self._rounds.replace_upload(state, branch, replaced=replaced, new=parsed)
                self._blobs.delete(replaced)
            for leaf_id in taken_out:
                self._take_out(branch, state, leaf_id)
            logger.info(
                "leaf %s uploaded %s to round %d of branch %s (%d/%d)",
                leaf.name, file_id, state.round, branch.id, len(state.contributors), branch.aggregation_target,
            )
            completed = None
            if state.complete(branch):
                try:
                    completed = self._finalise(branch, state)
                except Exception:
                    self._retries.schedule(branch.id, self._retries.first_s)
                    raise
            return IngestResult(file_id=file_id, completed_aggregation_id=completed)

    def recover(self) -> list[tuple[str, str]]:
        """Finish every open aggregation that reached its target before a crash; returns (branch, aggregation).

        Also deletes what a crash left in the scratch folder and the blob store: no request is running yet.
        """
        self._writer.clear_scratch()
        self._retention.sweep()
        finished = []
        with self._sessions() as session:
            branches = list(session.scalars(select(Branch)))
        for branch in branches:
            with self._lock(branch.id):
                try:
                    state = self._state(branch)
                except RoundDamaged:
                    continue  # named in the log and the branch's status; the others are served
                if state.complete(branch):
                    aggregation_id = self._finish_or_retry_later(branch, state, self._retries.first_s)
                    if aggregation_id is not None:
                        finished.append((branch.id, aggregation_id))
        return finished

    def reload_damaged(self, now: float | None = None) -> list[tuple[str, str]]:
        """Try again to rebuild the rounds whose uploads could not be read (see `round_state`); one that loads
        and has reached its target is finished. Returns (branch, aggregation) for each one finished."""
        now = time.time() if now is None else now
        finished = []
        for branch_id, next_wait_s in self._reloads.due(now):
            with self._lock(branch_id):
                branch = self._branch(branch_id)
                if branch is None or self._rounds.damaged(branch_id) is None:
                    self._reloads.drop(branch_id)  # set aside meanwhile
                    continue
                try:
                    state = self._rounds.get(branch)
                except RoundDamaged:
                    self._reloads.schedule(branch_id, next_wait_s)
                    continue
                self._reloads.drop(branch_id)
                logger.info("branch %s: round %d rebuilt from its uploads; serving it again", branch_id, state.round)
                if state.complete(branch):
                    aggregation_id = self._finish_or_retry_later(branch, state, self._retries.first_s)
                    if aggregation_id is not None:
                        finished.append((branch_id, aggregation_id))
        return finished

    def damaged(self, branch_id: str) -> DamagedRound | None:
        """Why the branch's open round cannot be rebuilt, while it cannot."""
        return self._rounds.damaged(branch_id)

    def _state(self, branch: Branch) -> OpenAggregation:
        """`RoundStates.get`, naming a damaged round in the log the first time and retrying it later."""
        try:
            return self._rounds.get(branch)
        except RoundDamaged as damaged:
            if branch.id not in self._reloads:
                wait_s = self._reloads.first_s
                self._reloads.schedule(branch.id, wait_s)
                logger.error("branch %s: round %d cannot be rebuilt from its uploads (%s); the other branches are "
                             "served, this one answers uploads with 503. Tried again in %.0f s; `fedgrove run "
                             "stop %s` sets the round's uploads aside", branch.id, damaged.damage.round,
                             damaged.damage.reason, wait_s, branch.id)
            raise

    def retry_unfinished(self, now: float | None = None) -> list[tuple[str, str]]:
        """Finish the rounds that were due but whose aggregate could not be stored (see `finish_retries`).
        Returns (branch, aggregation) for each one finished; one still failing is tried again later."""
        now = time.time() if now is None else now
        finished = []
        for branch_id, next_wait_s in self._retries.due(now):
            with self._lock(branch_id):
                branch = self._branch(branch_id)
                state = self._rounds.cached(branch_id)
                if branch is None or state is None or not state.due(branch, now):
                    self._retries.drop(branch_id)  # finished meanwhile (a leaf uploaded again)
                    continue
                aggregation_id = self._finish_or_retry_later(branch, state, next_wait_s)
                if aggregation_id is not None:
                    finished.append((branch_id, aggregation_id))
        return finished

    def finalise_overdue(self, now: float | None = None) -> list[tuple[str, str]]:
        """Finish the open aggregation of every branch whose round timeout has passed since its first
        upload, if at least `min_leaves` have uploaded (else it keeps waiting, as BranchKey does); see
        `OpenAggregation.due`. A branch whose aggregate could not be stored is left to `retry_unfinished`."""
        now = time.time() if now is None else now
        with self._sessions() as session:
            branches = list(session.scalars(select(Branch).where(Branch.round_timeout_s.is_not(None))))
        finished = []
        for branch in branches:
            if branch.id in self._retries or self._rounds.damaged(branch.id) is not None:
                continue
            with self._lock(branch.id):
                state = self._rounds.get(branch)
                if not state.due(branch, now):
                    continue
                if branch.max_weight_share is not None:  # the quorum's weightings are the round's: judge them
                    weightings = {leaf_id: c.weighting for leaf_id, c in state.contributors.items()}
                    for leaf_id in dominating(weightings, branch.max_weight_share):
                        self._take_out(branch, state, leaf_id)
                    if not state.due(branch, now):
                        continue
                aggregation_id = self._finish_or_retry_later(branch, state, self._retries.first_s)
                if aggregation_id is not None:
                    finished.append((branch.id, aggregation_id))
        return finished

    def set_aside_open_round(self, branch_id: str) -> int:
        """When a run is stopped, set the open round's uploads aside (see `set_aside`) and open a fresh
        round. Returns how many uploads were set aside. A round that is due but waiting for the blob store
        is finished work, not set aside; a damaged one (see `round_state`) is set aside, and served again."""
        with self._lock(branch_id):
            branch = self._branch(branch_id)
            if branch is None:
                raise NotFound(f"branch {branch_id} not found")
            # A damaged round is set aside from its rows alone: its uploads need not be read for that.
            state = self._rounds.rows(branch) if self._rounds.damaged(branch_id) else self._rounds.get(branch)
            if not state.contributors or branch_id in self._retries:
                return 0
            self._rounds.replace(branch_id, set_aside(self._sessions, branch_id=branch_id, state=state))
            self._reloads.drop(branch_id)
        logger.info("branch %s: run stopped; %d upload(s) of round %d set aside in %s",
                    branch_id, len(state.contributors), state.round, state.id)
        return len(state.contributors)

    def open_round(self, branch_id: str) -> tuple[int, list[str]]:
        """The open aggregation's round number and the ids of the leaves that have uploaded to it."""
        return self._rounds.open_round(branch_id)

    def pending_for(self, leaf: LeafIdentity) -> str | None:
        """The newest finished aggregation this leaf contributed to and has not downloaded yet."""
        return self._downloads.pending_for(leaf)

    def authorise_download(self, leaf: LeafIdentity, file_id: str) -> None:
        """Allow a leaf its own branch's aggregates only, and record that it has fetched this one."""
        self._downloads.authorise(leaf, file_id)

    def _take_out(self, branch: Branch, state: OpenAggregation, leaf_id: str) -> None:
        """Take a leaf's upload out of the open round: its row, its blob and its share of the running aggregate."""
        contributor = state.contributors.pop(leaf_id)
        self._uploads.forget(contributor.file_id)
        self._rounds.take_out(state, branch, contributor.file_id)
        self._blobs.delete(contributor.file_id)
        logger.warning("branch %s: upload %s left round %d: its weighting %g was more than the branch's "
                       "max_weight_share %g of the round's total", branch.id, contributor.file_id, state.round,
                       contributor.weighting, branch.max_weight_share)

    def _finish_or_retry_later(self, branch: Branch, state: OpenAggregation, wait_s: float) -> str | None:
        """`_finalise`; or, when the aggregate cannot be stored, None and another try in `wait_s`. Call with
        the branch's lock held."""
        try:
            return self._finalise(branch, state)
        except Exception as exc:
            self._retries.schedule(branch.id, wait_s)
            logger.warning("branch %s: its round is due but the aggregate could not be stored (%s); trying "
                           "again in %.0f s", branch.id, exc, wait_s)
            return None

    def _finalise(self, branch: Branch, state: OpenAggregation) -> str:
        """Finish `state` (see `finishing`); call with the branch's lock held. Returns the aggregate's id."""
        self._rounds.replace(branch.id, self._writer.finish(branch, state))
        self._resends.finished(branch.id, state.id, state.contributors)
        self._retries.drop(branch.id)
        try:
            self._retention.after_finish(branch.id, state.round)
        except Exception:  # the round is finished: a blob not deleted now is swept at the next start
            logger.exception("branch %s: the retention policy failed after round %d", branch.id, state.round)
        logger.info(
            "branch %s: round %d aggregated from %d leaves into %s",
            branch.id, state.round, len(state.contributors), state.id,
        )
        return state.id
