"""Taking an upload into storage: its blob in the blob store, its row in the database.

The blob store takes the file (an fsync or an S3 upload: waiting, not CPU, ~10 ms per 3.7 MB here) while
the archive is decoded from a handle opened before; the upload is answered once both are done. The blob is
stored before the branch lock is taken, so uploads to one branch overlap their I/O. Whatever refuses the
upload afterwards, its blob is deleted again unless its row was committed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, insert
from sqlalchemy.orm import sessionmaker

from aggregator.archive import ParsedArchive, read_archive_from
from aggregator.blobstore import BlobStore
from aggregator.db import Contribution

logger = logging.getLogger(__name__)
# Written for every upload: on the table itself, without the ORM's bulk-insert machinery.
_CONTRIBUTIONS = Contribution.__table__


@dataclass(frozen=True)
class IngestResult:
    file_id: str  # what the leaf is answered with
    completed_aggregation_id: str | None  # the aggregation this upload completed, if any


# (file id, size in bytes, the decoded archive) -> what the upload came to
TakeStored = Callable[[str, int, ParsedArchive], IngestResult]


class UploadStore:
    def __init__(self, *, sessions: sessionmaker, blobs: BlobStore, limits: dict[str, int | None]) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._limits = limits
        # One per ingest thread (`ingest_lanes`): each stores its upload while it decodes it.
        self._store_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store")

    def take(self, archive_path: Path, take_stored: TakeStored) -> IngestResult:
        """Store and decode the upload at `archive_path`, then hand it to `take_stored`; returns what that
        returns. The blob is deleted if decoding or `take_stored` refuses the upload before its row is
        committed, or if `take_stored` answers with another file id (a resent archive)."""
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
            result = take_stored(file_id, size, parsed)
        except BaseException:
            if not self._committed(file_id):
                self._blobs.delete(file_id)
            raise
        if result.file_id != file_id:
            self._blobs.delete(file_id)
        return result

    def commit(
        self, *, aggregation_id: str, leaf_id: str, file_id: str, parsed: ParsedArchive, size: int, digest: str,
        replaced: str | None,
    ) -> None:
        """The upload's row, in place of the row of the upload it `replaced` (the leaf's earlier one)."""
        with self._sessions() as session:
            if replaced is not None:
                session.execute(delete(_CONTRIBUTIONS).where(_CONTRIBUTIONS.c.id == replaced))
            session.execute(
                insert(_CONTRIBUTIONS).values(
                    id=file_id,
                    aggregation_id=aggregation_id,
                    leaf_id=leaf_id,
                    weighting=parsed.weighting,
                    size=size,
                    digest=digest,
                    content_digest=parsed.fingerprint,
                )
            )
            session.commit()

    def forget(self, file_id: str) -> None:
        """Delete an upload's row (it leaves its round: see `weight_share`)."""
        with self._sessions() as session:
            session.execute(delete(_CONTRIBUTIONS).where(_CONTRIBUTIONS.c.id == file_id))
            session.commit()

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
