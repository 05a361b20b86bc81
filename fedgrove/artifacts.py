"""The run artifact store: where a training run publishes its outputs (model.pt, model.json, result.png,
epochs.csv, summary.json), in `./runs/<run-id>/` by default or under `s3://bucket/prefix/<run-id>/` (or
the bucket of a Prefect S3Bucket block, `block:s3-bucket/<name>`).

A flow writes through `ArtifactStore` and never cares which one it has; `artifact_store_from_url`
picks it from a URL. `publish_run` uploads a set of files so that a failure leaves nothing of that call
behind: the local store stages every file before renaming any into place, the S3 store deletes what it
uploaded in the call and then raises.

    ArtifactStoreError           anything the store could not do
    ├── ArtifactNotFound         no artifact of that name in that run
    ├── InvalidArtifactName      a run id or name outside [A-Za-z0-9._-]{1,128}, or "." / ".."
    └── ArtifactStoreUnavailable a missing bucket, refused credentials, an S3 endpoint that does not answer
"""

from __future__ import annotations

import json
import logging
import mimetypes
from pathlib import Path
from typing import Any, NoReturn, Protocol

from fedgrove_common.atomic_files import replace_durably, staged, staged_copy
from fedgrove_common.names import NAME_RULE, is_valid_name
from fedgrove_common.s3 import S3Connection, S3Credentials, S3Location, S3Problem
from fedgrove_common.prefect_blocks import BlockNotUsable
from fedgrove.store_target import store_target

logger = logging.getLogger(__name__)

WEEK = 7 * 24 * 3600
SETTING = "the artifact store URL"


class ArtifactStoreError(Exception):
    pass


class ArtifactNotFound(ArtifactStoreError):
    pass


class InvalidArtifactName(ArtifactStoreError):
    pass


class ArtifactStoreUnavailable(ArtifactStoreError):
    pass


class ArtifactStore(Protocol):
    def write_file(self, run_id: str, name: str, source: Path) -> str:
        """Copy `source` to the run as `name`; returns its URI (an absolute path or s3://...)."""

    def write_json(self, run_id: str, name: str, obj: Any) -> str:
        """Write `obj` as indented JSON; returns its URI."""

    def read_bytes(self, run_id: str, name: str) -> bytes: ...

    def url(self, run_id: str, name: str, *, expires_in: int = WEEK) -> str:
        """A URL to read the artifact: `file://...` locally, a presigned HTTP GET URL on S3."""

    def publish_run(self, run_id: str, files: dict[str, Path]) -> dict[str, str]:
        """Write every file (name → source) or, on any failure, none of them; returns name → URI."""

    def list(self, run_id: str) -> list[str]:
        """The artifact names of a run, sorted; [] for an unknown run."""


def artifact_store_from_url(
    url: str | None, *, default_dir: Path = Path("runs"), endpoint_url: str | None = None
) -> ArtifactStore:
    """Pick the artifact store for a URL.

    `None`/"" → `default_dir` (`./runs`); `file:///abs/path` or a plain path → there;
    `s3://bucket/prefix` → S3 (`endpoint_url` overrides `AWS_ENDPOINT_URL`);
    `block:s3-bucket/<name>` → the bucket, folder, endpoint and credentials of that Prefect S3Bucket block.
    """
    try:
        target = store_target(url, setting=SETTING, default_dir=default_dir, endpoint_url=endpoint_url)
    except BlockNotUsable:
        raise
    except ValueError as exc:
        raise ArtifactStoreError(str(exc)) from exc
    if isinstance(target, Path):
        return LocalArtifactStore(target)
    return S3ArtifactStore(target.url, endpoint_url=target.endpoint_url, credentials=target.credentials)


def check_name(value: str, *, what: str = "artifact name") -> str:
    if not is_valid_name(value):
        raise InvalidArtifactName(f"expected a {what} of {NAME_RULE}, got {value!r}")
    return value


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


class LocalArtifactStore:
    """Artifacts as files in `<root>/<run-id>/`, each written atomically (`fedgrove_common.atomic_files`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def _run_dir(self, run_id: str) -> Path:
        return self.root / check_name(run_id, what="run id")

    def _path(self, run_id: str, name: str) -> Path:
        return self._run_dir(run_id) / check_name(name)

    def write_file(self, run_id: str, name: str, source: Path) -> str:
        return self.publish_run(run_id, {name: source})[name]

    def write_json(self, run_id: str, name: str, obj: Any) -> str:
        path = self._path(run_id, name)
        with staged(path.parent) as (temp, out):
            out.write(_json_bytes(obj))
        replace_durably(temp, path)
        return str(path)

    def read_bytes(self, run_id: str, name: str) -> bytes:
        path = self._path(run_id, name)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"expected artifact {name!r} of run {run_id!r} at {path}, got none") from exc

    def url(self, run_id: str, name: str, *, expires_in: int = WEEK) -> str:
        return self._path(run_id, name).as_uri()

    def publish_run(self, run_id: str, files: dict[str, Path]) -> dict[str, str]:
        targets = {name: self._path(run_id, name) for name in files}
        copies: dict[str, Path] = {}
        try:
            for name, source in files.items():
                copies[name] = staged_copy(self._run_dir(run_id), source)
        except OSError as exc:
            for temp in copies.values():
                temp.unlink(missing_ok=True)
            raise ArtifactStoreError(
                f"expected a readable file for artifact {name!r} of run {run_id!r}, got {exc}; "
                f"nothing of this call was published (fix: write the file before publishing)"
            ) from exc
        for name, temp in copies.items():
            replace_durably(temp, targets[name])
        logger.info("published %d artifact(s) of run %s to %s", len(files), run_id, self.root)
        return {name: str(path) for name, path in targets.items()}

    def list(self, run_id: str) -> list[str]:
        folder = self._run_dir(run_id)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and is_valid_name(p.name))


class S3ArtifactStore:
    """Artifacts as objects under `s3://bucket/prefix/<run-id>/<name>` (standard AWS credential chain)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, setting: str = SETTING,
                 credentials: S3Credentials | None = None) -> None:
        try:
            self.location = S3Location.parse(url, setting=setting)
        except ValueError as exc:
            raise ArtifactStoreError(str(exc)) from exc
        self._s3 = S3Connection(endpoint_url=endpoint_url, setting=setting, credentials=credentials)
        self._client = self._s3.client

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.location.uri()!r}, endpoint_url={self._s3.endpoint_url!r})"

    def _key(self, run_id: str, name: str) -> str:
        return self.location.key(check_name(run_id, what="run id"), check_name(name))

    def _error(self, exc: Exception, *, key: str) -> ArtifactStoreError:
        failure = self._s3.explain(exc, bucket=self.location.bucket, key=key)
        if failure is None:  # not an S3 error: typically an unreadable local source file
            return ArtifactStoreError(f"expected a readable file for s3://{self.location.bucket}/{key}, got {exc}")
        kind = {
            S3Problem.NOT_FOUND: ArtifactNotFound,
            S3Problem.OTHER: ArtifactStoreError,
        }.get(failure.problem, ArtifactStoreUnavailable)
        return kind(failure.message)

    def _raise(self, exc: Exception, *, key: str) -> NoReturn:
        raise self._error(exc, key=key) from exc

    def _upload(self, source: Path, key: str) -> None:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        self._client.upload_file(str(source), self.location.bucket, key, ExtraArgs={"ContentType": content_type})

    def write_file(self, run_id: str, name: str, source: Path) -> str:
        return self.publish_run(run_id, {name: source})[name]

    def write_json(self, run_id: str, name: str, obj: Any) -> str:
        key = self._key(run_id, name)
        try:
            self._client.put_object(
                Bucket=self.location.bucket, Key=key, Body=_json_bytes(obj), ContentType="application/json"
            )
        except Exception as exc:
            self._raise(exc, key=key)
        return f"s3://{self.location.bucket}/{key}"

    def read_bytes(self, run_id: str, name: str) -> bytes:
        key = self._key(run_id, name)
        try:
            return self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read()
        except Exception as exc:
            self._raise(exc, key=key)

    def url(self, run_id: str, name: str, *, expires_in: int = WEEK) -> str:
        """A presigned GET URL; does not check that the artifact exists."""
        key = self._key(run_id, name)
        try:
            return self._s3.presigned_get_url(bucket=self.location.bucket, key=key, expires_in=expires_in)
        except ValueError:
            raise  # a lifetime out of range: the caller's mistake, not the store's
        except Exception as exc:
            self._raise(exc, key=key)

    def publish_run(self, run_id: str, files: dict[str, Path]) -> dict[str, str]:
        keys = {name: self._key(run_id, name) for name in files}  # validate every name before uploading
        uploaded: list[str] = []
        for name, source in files.items():
            try:
                self._upload(source, keys[name])
            except Exception as exc:
                error = self._error(exc, key=keys[name])
                removed = self._remove(uploaded)
                raise type(error)(
                    f"publishing run {run_id!r} failed on artifact {name!r}: {error}; "
                    f"removed the {removed} artifact(s) this call had uploaded"
                ) from exc
            uploaded.append(keys[name])
        logger.info("published %d artifact(s) of run %s to %s", len(files), run_id, self.location.uri(run_id))
        return {name: f"s3://{self.location.bucket}/{key}" for name, key in keys.items()}

    def _remove(self, keys: list[str]) -> int:
        """Best-effort rollback of `publish_run`; returns how many objects were deleted."""
        removed = 0
        for key in keys:
            try:
                self._client.delete_object(Bucket=self.location.bucket, Key=key)
                removed += 1
            except Exception:
                logger.warning("could not remove s3://%s/%s after a failed publish", self.location.bucket, key)
        return removed

    def list(self, run_id: str) -> list[str]:
        prefix = self.location.key(check_name(run_id, what="run id")) + "/"
        names: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                names.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
        except Exception as exc:
            self._raise(exc, key=prefix)
        return sorted(n for n in names if is_valid_name(n))
