"""Reads back an upload kept in the blob store, under the limits it was taken in with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aggregator.archive import ParsedArchive
from aggregator.blobstore import BlobStore


class StoredArchives:
    def __init__(self, blobs: BlobStore, read: Callable[[Path], ParsedArchive]) -> None:
        self._blobs = blobs
        self._read = read

    def read(self, file_id: str) -> ParsedArchive:
        """The upload `file_id`, decoded; the blob store's errors (BlobNotFound, ...) as they come."""
        with self._blobs.open_local(file_id) as path:
            return self._read(path)
