"""Where the model registry keeps its one document, `<artifacts>/registry/index.json`, and how it changes it:
compare-and-swap, so that two runs finishing together cannot both move a pointer.

Why this module exists: the run artifact store (`fedgrove.artifacts`) writes a run's files once and never
needs to know what was there before. The registry's index is shared by every run and rewritten by each, so
every write here is conditional: "replace the index only if it is still the version I read". A write that
loses the race returns False and changes nothing; the caller re-reads and decides again.

* Local folder: an exclusive `flock` on `index.json.lock` around read-compare-write, the new bytes written to
  a temporary file and renamed over the index (`os.replace`). A crashed writer leaves the old index or the
  new one, and its lock goes with its process. The version is the SHA-256 of the bytes.
* S3: PutObject with `If-Match: <ETag read>` (or `If-None-Match: *` for the first index), which S3 refuses
  with 412 when the object changed. An S3-compatible server that ignores these headers (measured: `rclone
  serve s3` 1.75 accepts a PutObject whatever its If-Match / If-None-Match say; see docs/registry.md) cannot
  give compare-and-swap. The store finds out once, with a probe object, and then falls back to the
  strongest thing it can do without it: compare the ETag just before writing and read the index back after
  writing, losing if it is not its own. That narrows the race to milliseconds but does not close it;
  `conditional_writes` says which one a store has, and the registry warns when it is False.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from botocore.exceptions import ClientError

from fedgrove_common.atomic_files import replace_durably, staged
from fedgrove_common.s3 import S3Connection, S3Credentials, S3Location
from fedgrove_common.prefect_blocks import BlockNotUsable
from fedgrove.store_target import store_target

logger = logging.getLogger(__name__)

FOLDER = "registry"
INDEX = "index.json"
PROBE = ".conditional-write-probe"
SETTING = "the artifact store URL"
_CONFLICT_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


class RegistryStoreError(RuntimeError):
    """The registry's store could not be read or written; the message names where and the fix."""


@dataclass(frozen=True)
class Stored:
    """The index as read: its bytes (None when there is none yet) and the version to compare-and-swap against."""

    data: bytes | None
    version: str | None


class IndexStore(Protocol):
    location: str  # where the index is, for messages: a path or s3://...
    conditional_writes: bool  # whether `replace_if` is a true compare-and-swap

    def read(self) -> Stored: ...

    def replace_if(self, data: bytes, *, expected: str | None) -> bool:
        """Write `data` only if the index is still at version `expected` (None: only if there is none); False,
        and nothing written, if it moved."""


def index_store_from_url(url: str | None, *, default_dir: Path = Path("runs"),
                         endpoint_url: str | None = None) -> IndexStore:
    """The registry of the artifact store at `url` (a folder, file:///..., s3://bucket/prefix, or a Prefect
    S3Bucket block as block:s3-bucket/<name>)."""
    try:
        target = store_target(url, setting=SETTING, default_dir=default_dir, endpoint_url=endpoint_url)
    except BlockNotUsable:
        raise
    except ValueError as exc:
        raise RegistryStoreError(str(exc)) from exc
    if isinstance(target, Path):
        return LocalIndexStore(target)
    return S3IndexStore(target.url, endpoint_url=target.endpoint_url, credentials=target.credentials)


class LocalIndexStore:
    """`<root>/registry/index.json`, changed under an exclusive lock and replaced by a rename."""

    conditional_writes = True

    def __init__(self, root: Path) -> None:
        self.folder = Path(root).expanduser().resolve() / FOLDER
        self.path = self.folder / INDEX
        self.location = str(self.path)

    def read(self) -> Stored:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Stored(None, None)
        return Stored(data, hashlib.sha256(data).hexdigest())

    def replace_if(self, data: bytes, *, expected: str | None) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{INDEX}.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes, or its process dies
            if self.read().version != expected:
                return False
            with staged(self.folder) as (temp, handle):
                handle.write(data)
            replace_durably(temp, self.path)
            return True


class S3IndexStore:
    """`s3://bucket/prefix/registry/index.json`, replaced by a conditional PutObject where the server has them."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, credentials: S3Credentials | None = None) -> None:
        try:
            location = S3Location.parse(url, setting=SETTING)
        except ValueError as exc:
            raise RegistryStoreError(str(exc)) from exc
        self.bucket = location.bucket
        self.key = location.key(FOLDER, INDEX)
        self._probe_key = location.key(FOLDER, PROBE)
        self.location = f"s3://{self.bucket}/{self.key}"
        self._s3 = S3Connection(endpoint_url=endpoint_url, setting=SETTING, credentials=credentials)
        self._client = self._s3.client
        self._conditional: bool | None = None

    def _error(self, exc: Exception, key: str) -> RegistryStoreError:
        failure = self._s3.explain(exc, bucket=self.bucket, key=key)
        return RegistryStoreError(failure.message if failure is not None else f"{self.location}: {exc}")

    @property
    def conditional_writes(self) -> bool:
        """Whether the server refuses a PutObject whose If-None-Match fails (probed once per store)."""
        if self._conditional is None:
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._probe_key, Body=b"probe")
                self._client.put_object(Bucket=self.bucket, Key=self._probe_key, Body=b"probe", IfNoneMatch="*")
            except ClientError as exc:
                if _conflict(exc):
                    self._conditional = True
                    return True
                raise self._error(exc, self._probe_key) from exc
            except Exception as exc:
                raise self._error(exc, self._probe_key) from exc
            self._conditional = False
            logger.warning("S3 endpoint %s ignores If-None-Match on PutObject: registry writes to %s compare the "
                           "ETag before writing and read back after, which narrows but does not close the race "
                           "between two concurrent promotions", self._s3.endpoint_url, self.location)
        return self._conditional

    def read(self) -> Stored:
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "NotFound", "404"}:
                return Stored(None, None)
            raise self._error(exc, self.key) from exc
        except Exception as exc:
            raise self._error(exc, self.key) from exc
        return Stored(answer["Body"].read(), answer["ETag"])

    def replace_if(self, data: bytes, *, expected: str | None) -> bool:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        if not self.conditional_writes:
            return self._replace_checked(data, expected=expected, condition=condition)
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.key, Body=data, ContentType="application/json",
                                    **condition)
        except ClientError as exc:
            if _conflict(exc) or (expected is not None and _code(exc) in {"NoSuchKey", "404"}):
                return False
            raise self._error(exc, self.key) from exc
        except Exception as exc:
            raise self._error(exc, self.key) from exc
        return True

    def _replace_checked(self, data: bytes, *, expected: str | None, condition: dict[str, str]) -> bool:
        """Without conditional writes: compare just before writing, and read back after (see the docstring)."""
        if self.read().version != expected:
            return False
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.key, Body=data, ContentType="application/json",
                                    **condition)
        except Exception as exc:
            raise self._error(exc, self.key) from exc
        return self.read().data == data  # the registry puts a fresh revision id in every index it writes

def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _conflict(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _code(exc) in _CONFLICT_CODES or status in {409, 412}
