"""Where the aggregation server keeps uploaded `.npz` archives and computed aggregates.

One small interface, `BlobStore`, and two implementations chosen by `FEDGROVE_BLOB_URL`:

* `LocalBlobStore`: files in one folder (default `<data_dir>/blobs`); the server streams them itself
  and signs its own download links, so `presigned_url` is None and `local_path` the file.
* `S3BlobStore`: objects under `s3://bucket/prefix`; downloads go straight to S3 through presigned URLs.

Keys are opaque names (the server uses uuid hex) under `fedgrove_common.names`' rule, validated before
anything touches the disk or the network, so a path-traversal attempt fails with `InvalidBlobKey` and nothing
else. A writer never exposes a half-written blob: the local store writes through
`fedgrove_common.atomic_files` (temporary file, fsync, rename, fsync of the folder); an S3 PUT is atomic.
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn, Protocol

from aggregator.blobstore_errors import BlobNotFound, BlobStoreError, BlobStoreUnavailable, InvalidBlobKey
from fedgrove_common.atomic_files import TEMP_PREFIX, move_durably, staged_copy
from fedgrove_common.names import is_valid_name
from fedgrove_common.s3 import S3Connection, S3Credentials, S3Location, S3Problem
from fedgrove_common.prefect_blocks import BlockNotUsable, s3_bucket_block
from fedgrove_common.store_urls import is_block_url, local_folder

logger = logging.getLogger(__name__)

SETTING = "FEDGROVE_BLOB_URL"


class BlobStore(Protocol):
    """What the server needs from a blob store. Every method raises `InvalidBlobKey` for a bad key."""

    def put_file(self, key: str, source: Path) -> None:
        """Store a copy of `source` under `key`, replacing any blob there; atomic for readers."""

    def move_file(self, key: str, source: Path) -> None:
        """Store `source` under `key` as `put_file` does, consuming it (a local store renames it in)."""

    def fetch(self, key: str, destination: Path) -> Path:
        """Copy the blob to `destination` (a seekable local file for np.load); `BlobNotFound` if missing."""

    def open_local(self, key: str) -> AbstractContextManager[Path]:
        """A local path to the blob for the `with` block: the file itself, or a download deleted after."""

    def delete(self, key: str) -> None:
        """Remove the blob; a missing key is not an error."""

    def keys(self) -> Iterator[str]:
        """Every blob's key (the orphan sweep lists them)."""

    def clear_interrupted(self) -> int:
        """Delete what interrupted writes left (temporary files); returns how many. Only while none runs."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """Size in bytes; `BlobNotFound` if missing."""

    def presigned_url(self, key: str, *, expires_in: int) -> str | None:
        """A GET URL valid for `expires_in` seconds, or None when the server must serve the blob itself."""

    def local_path(self, key: str) -> Path | None:
        """The blob's file, to stream in a response (`BlobNotFound` if missing), or None if not local."""


def validate_key(key: str) -> str:
    if not is_valid_name(key):
        raise InvalidBlobKey(key)
    return key


def blob_store_from_url(url: str | None, *, data_dir: Path, endpoint_url: str | None = None) -> BlobStore:
    """Pick the store for `FEDGROVE_BLOB_URL`.

    `None`/"" → `<data_dir>/blobs`; `file:///abs/path` or a plain path → that folder;
    `s3://bucket/prefix` → S3 (`endpoint_url` overrides `AWS_ENDPOINT_URL`); `block:s3-bucket/<name>` → the
    bucket, folder, endpoint and credentials of that Prefect S3Bucket block (read once, at start-up, from the
    Prefect API that PREFECT_API_URL names).
    """
    if is_block_url(url):
        try:
            block = s3_bucket_block(str(url), setting=SETTING)
        except BlockNotUsable as exc:
            raise BlobStoreError(str(exc)) from exc
        return S3BlobStore(block.url, endpoint_url=block.endpoint_url, credentials=block.credentials)
    try:
        folder = local_folder(url, setting=SETTING, default=data_dir / "blobs")
    except ValueError as exc:
        raise BlobStoreError(str(exc)) from exc
    if folder is None:
        return S3BlobStore(str(url), endpoint_url=endpoint_url)
    return LocalBlobStore(folder)


class LocalBlobStore:
    """Blobs as files in one folder, written atomically (temp file, fsync, rename, fsync of the folder)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key, where=str(self.root))
        return path

    def put_file(self, key: str, source: Path) -> None:
        self._path(key)  # a bad key writes nothing
        temp = staged_copy(self.root, source)
        try:
            self._rename_in(key, temp)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def move_file(self, key: str, source: Path) -> None:
        self._path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._rename_in(key, Path(source))
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self.put_file(key, source)  # another filesystem: copy, then drop the source
            Path(source).unlink(missing_ok=True)

    def _rename_in(self, key: str, file: Path) -> None:
        """Make `file` (on the store's filesystem) the blob `key`, durably."""
        path = self._path(key)
        move_durably(file, path)
        logger.debug("stored blob %s (%d bytes) in %s", key, path.stat().st_size, self.root)

    def fetch(self, key: str, destination: Path) -> Path:
        shutil.copyfile(self._existing(key), destination)
        return Path(destination)

    @contextmanager
    def open_local(self, key: str) -> Iterator[Path]:
        yield self._existing(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        if self.root.is_dir():
            yield from (path.name for path in self.root.iterdir() if path.is_file() and is_valid_name(path.name))

    def clear_interrupted(self) -> int:
        leftovers = list(self.root.glob(f"{TEMP_PREFIX}*")) if self.root.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def presigned_url(self, key: str, *, expires_in: int) -> str | None:
        validate_key(key)
        return None

    def local_path(self, key: str) -> Path | None:
        return self._existing(key)


class S3BlobStore:
    """Blobs as objects under `s3://bucket/prefix/<key>`.

    Credentials come from `credentials` (a Prefect block's), else the standard AWS chain; the endpoint from
    `endpoint_url`, else `AWS_ENDPOINT_URL`, else AWS. Path-style addressing, so S3-compatible servers work too.
    """

    def __init__(self, url: str, *, endpoint_url: str | None = None, setting: str = SETTING,
                 credentials: S3Credentials | None = None) -> None:
        try:
            self.location = S3Location.parse(url, setting=setting)
        except ValueError as exc:
            raise BlobStoreError(str(exc)) from exc
        self._s3 = S3Connection(endpoint_url=endpoint_url, setting=setting, credentials=credentials)
        self._client = self._s3.client

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location.uri()!r}, endpoint_url={self._s3.endpoint_url!r})"

    def _key(self, key: str) -> str:
        return self.location.key(validate_key(key))

    def _raise(self, exc: Exception, key: str) -> NoReturn:
        failure = self._s3.explain(exc, bucket=self.location.bucket, key=self._key(key))
        if failure is None:
            raise exc
        if failure.problem is S3Problem.NOT_FOUND:
            raise BlobNotFound(key, where=self.location.uri()) from exc
        if failure.problem is S3Problem.OTHER:
            raise BlobStoreError(failure.message) from exc
        raise BlobStoreUnavailable(failure.message) from exc

    def put_file(self, key: str, source: Path) -> None:
        object_key = self._key(key)
        try:
            self._client.upload_file(str(source), self.location.bucket, object_key)
        except OSError:
            raise  # the local source is unreadable: the caller's problem, not the store's
        except Exception as exc:
            self._raise(exc, key)
        logger.debug("stored blob %s in %s", key, self.location.uri())

    def move_file(self, key: str, source: Path) -> None:
        self.put_file(key, source)
        Path(source).unlink(missing_ok=True)

    def fetch(self, key: str, destination: Path) -> Path:
        object_key = self._key(key)
        try:
            self._client.download_file(self.location.bucket, object_key, str(destination))
        except Exception as exc:
            self._raise(exc, key)
        return Path(destination)

    @contextmanager
    def open_local(self, key: str) -> Iterator[Path]:
        validate_key(key)
        with tempfile.TemporaryDirectory(prefix="fedgrove-blob-") as folder:
            yield self.fetch(key, Path(folder) / key)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.location.bucket, Key=self._key(key))
        except Exception as exc:
            self._raise(exc, key)

    def keys(self) -> Iterator[str]:
        prefix = self.location.key() + "/" if self.location.prefix else ""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if is_valid_name(key := item["Key"][len(prefix) :]):
                        yield key
        except Exception as exc:
            failure = self._s3.explain(exc, bucket=self.location.bucket)
            if failure is None:
                raise
            unavailable = failure.problem is not S3Problem.OTHER
            raise (BlobStoreUnavailable if unavailable else BlobStoreError)(failure.message) from exc

    def clear_interrupted(self) -> int:
        return 0  # an S3 PUT is whole or absent

    def _head(self, key: str) -> dict[str, Any]:
        try:
            return self._client.head_object(Bucket=self.location.bucket, Key=self._key(key))
        except Exception as exc:
            self._raise(exc, key)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except BlobNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def presigned_url(self, key: str, *, expires_in: int) -> str | None:
        """A GET URL anyone can use until it expires. Does not check that the blob exists."""
        object_key = self._key(key)
        try:
            return self._s3.presigned_get_url(bucket=self.location.bucket, key=object_key, expires_in=expires_in)
        except Exception as exc:  # a bad lifetime's ValueError is no S3 error: `_raise` raises it as it is
            self._raise(exc, key)

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None
