"""Reading a site's table from a file: a local path or an S3 object, as CSV, gzip-compressed CSV or Parquet.

Part of `fedgrove.sources` (which explains the two messages of a `SourceError`); it opens files for reading
only, and an S3 object is buffered in memory up to `SPOOL_BYTES`, on disk beyond.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import IO

import pandas as pd

from fedgrove_common.s3 import S3Connection, S3Location, S3Problem
from fedgrove.sources import DataSource, FileFormat, SourceError, block_source, s3_location, source_error

SNIFF_BYTES = 64 * 1024  # CSV text has no NUL byte; a binary file almost always has one in its first 64 KiB
SPOOL_BYTES = 64 * 1024 * 1024  # an S3 object up to this size is buffered in memory, a larger one on disk


def read_local_file(source: DataSource, path: Path, *, setting: str) -> pd.DataFrame:
    try:
        is_folder, exists = path.is_dir(), path.exists()
    except OSError as exc:  # e.g. a parent folder the site's user may not enter
        raise _unreadable(source, where=str(path), exc=exc) from None
    if is_folder:
        fix = f"fix: point {setting} at the file itself, not at the folder that holds it"
        raise _not_a_file(source, path, got="a folder", fix=fix, setting=setting)
    if not exists:
        fix = "fix: correct the path, or put the file there; a relative path starts at the site's working folder"
        raise _not_a_file(source, path, got="no file there", fix=fix, setting=setting)
    try:
        with open(path, "rb") as stream:
            return _parse_table(stream, source.file_format)
    except Exception as exc:  # whatever the reader raises on this file means it is not readable as its format
        raise _unreadable(source, where=str(path), exc=exc) from None


def _not_a_file(source: DataSource, path: Path, *, got: str, fix: str, setting: str) -> SourceError:
    kind = source.public_description()
    return source_error(
        f"expected {kind} at the path in {setting}, got {got} ({fix})",
        f"expected {kind} at {path}, got {got} ({fix})",
    )


def read_s3_file(source: DataSource, *, setting: str) -> pd.DataFrame:
    location, s3 = _s3_object(source, setting=setting)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buffer:
        try:
            body = s3.client.get_object(Bucket=location.bucket, Key=location.prefix)["Body"]
            shutil.copyfileobj(body, buffer, length=1024 * 1024)
        except Exception as exc:
            raise _s3_error(source, s3, location, exc, setting=setting) from None
        buffer.seek(0)
        try:
            return _parse_table(buffer, source.file_format)
        except Exception as exc:  # as for a local file
            raise _unreadable(source, where=location.uri(), exc=exc) from None


def _s3_object(source: DataSource, *, setting: str) -> tuple[S3Location, S3Connection]:
    """Where the object is and a client for it: AWS's own credential chain for an s3:// URL, the block's bucket,
    folder, endpoint and credentials for a block reference."""
    in_block = block_source(source.data or "")
    if in_block is None:
        return s3_location(source.data or ""), S3Connection(setting=setting)
    from fedgrove_common.prefect_blocks import BlockNotUsable, s3_bucket_block

    reference, key = in_block
    public = (f"expected {setting} to name a usable Prefect S3Bucket block, got one that could not be loaded (fix: "
              "read the full error on the site's own terminal)")
    try:
        block = s3_bucket_block(reference, setting=setting)
        location = s3_location(f"{block.url.rstrip('/')}/{key}")
    except BlockNotUsable as exc:
        raise source_error(public, str(exc)) from None
    except Exception as exc:  # the Prefect API unreachable or refusing, a profile that does not resolve, a bad key
        raise source_error(public, f"loading {reference} for {setting} failed: {type(exc).__name__}: {exc} (fix: "
                                   "check PREFECT_API_URL and the block's credentials, and the key after the block's "
                                   "name)") from None
    return location, S3Connection(endpoint_url=block.endpoint_url, credentials=block.credentials, setting=setting)


def _parse_table(stream: IO[bytes], fmt: FileFormat) -> pd.DataFrame:
    if fmt is FileFormat.PARQUET:
        return pd.read_parquet(stream, engine="pyarrow")
    text: IO[bytes] | gzip.GzipFile = gzip.GzipFile(fileobj=stream) if fmt is FileFormat.GZIP_CSV else stream
    if b"\0" in text.read(SNIFF_BYTES):  # pandas may "parse" a binary file into garbage rather than fail
        raise ValueError(f"found a NUL byte in the first {SNIFF_BYTES // 1024} KiB: binary data, not CSV text")
    text.seek(0)
    return pd.read_csv(text, low_memory=False)


def _unreadable(source: DataSource, *, where: str, exc: Exception) -> SourceError:
    kind, fmt = source.public_description(), source.file_format
    fix = (
        f"fix: export the table again as {fmt.content}, and check that the copy is complete and readable by the "
        "site's user"
    )
    return source_error(
        f"expected {kind} with valid content, got content that could not be read as {fmt.value} ({fix})",
        f"expected {kind} with valid content at {where}, got {type(exc).__name__}: {exc} ({fix})",
    )


_S3_PROBLEMS = {  # problem: (what was expected and what came, in general terms; the fix)
    S3Problem.NOT_FOUND: (
        "expected {kind} at the S3 URL in {var}, got no object there",
        "fix: upload the file, or correct the key in the URL",
    ),
    S3Problem.NO_BUCKET: (
        "expected {kind} at the S3 URL in {var}, got no such bucket on the S3 server",
        "fix: correct the bucket in the URL, or AWS_ENDPOINT_URL if it names the wrong server",
    ),
    S3Problem.CREDENTIALS: (
        "expected {kind} that the site's AWS credentials may read, got missing or refused credentials",
        "fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and the bucket's policy",
    ),
    S3Problem.UNREACHABLE: (
        "expected an S3 server to answer for {kind}, got no answer or a server error",
        "fix: start the S3 server or retry later, or set AWS_ENDPOINT_URL to where it listens",
    ),
    S3Problem.OTHER: ("expected {kind}, got an S3 error", "fix: read the full error on the site's own terminal"),
}


def _s3_error(
    source: DataSource, s3: S3Connection, location: S3Location, exc: Exception, *, setting: str
) -> SourceError:
    """The detail is `fedgrove_common.s3`'s sentence (bucket, key, endpoint, access key id; never the secret), with the
    fix added where it has none."""
    failure = s3.explain(exc, bucket=location.bucket, key=location.prefix)
    problem = S3Problem.OTHER if failure is None else failure.problem
    what, fix = _S3_PROBLEMS[problem]
    detail = f"reading {location.uri()} failed: {exc}" if failure is None else failure.message
    if "(fix:" not in detail and problem is not S3Problem.OTHER:
        detail = f"{detail} ({fix})"
    return source_error(f"{what.format(kind=source.public_description(), var=setting)} ({fix})", detail)
