"""S3 plumbing shared by the aggregator's blob store and the run artifact store.

Both stores reach S3, or an S3-compatible server (MinIO, SeaweedFS, `rclone serve s3`), the same way, so
the two things that are easy to get subtly wrong live here once:

* building the client: the standard AWS credential chain, `AWS_ENDPOINT_URL` (honoured by boto3 itself)
  or an explicit endpoint, SigV4 and path-style addressing so that S3-compatible servers work;
* turning botocore's errors into one sentence that names the bucket, the endpoint or the access key id,
  and the fix. The secret access key is never formatted into a message or a log line.

Each store maps the `S3Problem` of a `S3Failure` onto its own exception hierarchy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

DEFAULT_REGION = "us-east-1"
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer than a week

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "Forbidden",
        "403",
        "ExpiredToken",
        "InvalidToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
    }
)
_UNAVAILABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "503", "500"})


class S3Problem(enum.Enum):
    """What went wrong, in the terms a store needs to pick its exception."""

    NOT_FOUND = "not_found"  # the object is missing; the bucket exists
    NO_BUCKET = "no_bucket"
    CREDENTIALS = "credentials"  # missing, unknown or refused credentials
    UNREACHABLE = "unreachable"  # the endpoint did not answer or answered 5xx
    OTHER = "other"


@dataclass(frozen=True)
class S3Failure:
    problem: S3Problem
    message: str


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix` split into its parts; the prefix has no leading or trailing slash."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str, *, setting: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"expected {setting} like s3://bucket/prefix, got {url!r}")
        prefix = parts.path.strip("/")
        if "//" in prefix:
            raise ValueError(f"expected {setting} without empty path segments, got {url!r}")
        return cls(bucket=parts.netloc, prefix=prefix)

    def key(self, *parts: str) -> str:
        """The object key of `parts` below the prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"


@dataclass(frozen=True)
class S3Credentials:
    """Credentials given explicitly (e.g. by a Prefect AwsCredentials block) instead of AWS's own chain."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region_name: str | None = None


class S3Connection:
    """A boto3 S3 client plus what its error messages must name: the endpoint and the access key id.

    `setting` is the name of the option the user set the store's URL with (e.g. `FEDGROVE_BLOB_URL`);
    messages about a missing bucket tell the user to fix it. Without `credentials` the standard AWS chain
    (environment, shared files, instance metadata) is used.
    """

    def __init__(
        self, *, endpoint_url: str | None = None, region_name: str | None = None, setting: str,
        credentials: S3Credentials | None = None,
    ) -> None:
        given = credentials or S3Credentials()
        self._session = boto3.session.Session(
            aws_access_key_id=given.access_key_id, aws_secret_access_key=given.secret_access_key,
            aws_session_token=given.session_token, region_name=region_name or given.region_name,
        )
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
        self.client: Any = self._session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=self._session.region_name or DEFAULT_REGION,
            config=config,
        )
        self.endpoint_url: str = self.client.meta.endpoint_url
        self.setting = setting

    def access_key_id(self) -> str | None:
        """The access key id of the credential chain (resolved lazily: only error paths need it)."""
        try:
            credentials = self._session.get_credentials()
        except BotoCoreError:
            return None
        return None if credentials is None else credentials.access_key

    def presigned_get_url(self, *, bucket: str, key: str, expires_in: int) -> str:
        """A GET URL anyone can use for `expires_in` seconds (1 to a week, SigV4's limit; ValueError outside).
        It does not check that the object exists; botocore's errors pass through, for `explain`."""
        if not 1 <= expires_in <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expected expires_in between 1 and {MAX_PRESIGN_SECONDS} seconds, got {expires_in}")
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
        )

    def bucket_missing(self, bucket: str) -> bool:
        """Tell "no such key" from "no such bucket" after a bare 404 from a HEAD (which has no body)."""
        try:
            self.client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except ClientError as exc:
            return _code(exc) == "NoSuchBucket"
        except BotoCoreError:
            return False
        return False

    def explain(self, exc: BaseException, *, bucket: str, key: str | None = None) -> S3Failure | None:
        """Translate a botocore error raised for `bucket`/`key`; None if `exc` is not an S3 error."""
        client_error: ClientError | None = _find(exc, ClientError)
        if client_error is not None:
            return self._explain_client_error(client_error, bucket=bucket, key=key)
        boto_error = _find(exc, BotoCoreError)
        if boto_error is None:
            return None
        if isinstance(boto_error, (NoCredentialsError, PartialCredentialsError)):
            return S3Failure(
                S3Problem.CREDENTIALS,
                f"expected AWS credentials for s3://{bucket} at endpoint {self.endpoint_url}, "
                f"got {boto_error} (fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
            )
        if isinstance(boto_error, (BotoConnectionError, HTTPClientError)):
            return S3Failure(
                S3Problem.UNREACHABLE,
                f"expected an S3 server at endpoint {self.endpoint_url}, got {boto_error} "
                f"(fix: start the server or set AWS_ENDPOINT_URL to where it listens)",
            )
        return S3Failure(S3Problem.OTHER, f"S3 request for {_where(bucket, key)} failed: {boto_error}")

    def _explain_client_error(self, exc: ClientError, *, bucket: str, key: str | None) -> S3Failure:
        code = _code(exc)
        detail = exc.response.get("Error", {}).get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and self.bucket_missing(bucket)):
            return S3Failure(
                S3Problem.NO_BUCKET,
                f"S3 bucket {bucket!r} does not exist at endpoint {self.endpoint_url} "
                f"(fix: create it with `aws s3 mb s3://{bucket}`, or fix {self.setting})",
            )
        if code in _NOT_FOUND_CODES:
            return S3Failure(S3Problem.NOT_FOUND, f"expected an object at {_where(bucket, key)}, got none")
        if code in _CREDENTIAL_CODES:
            access_key = self.access_key_id()
            who = "no access key id" if access_key is None else f"access key id {access_key!r}"
            return S3Failure(
                S3Problem.CREDENTIALS,
                f"S3 at endpoint {self.endpoint_url} refused {who} for bucket {bucket!r} ({code}: {detail}); "
                f"expected a known access key id, its matching secret and access to the bucket "
                f"(fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and the bucket's policy)",
            )
        if code in _UNAVAILABLE_CODES or status >= 500:
            return S3Failure(
                S3Problem.UNREACHABLE,
                f"S3 at endpoint {self.endpoint_url} is unavailable for {_where(bucket, key)} "
                f"({code}: {detail}) (fix: retry later or check the S3 server)",
            )
        return S3Failure(
            S3Problem.OTHER,
            f"S3 at endpoint {self.endpoint_url} refused the request for {_where(bucket, key)} ({code}: {detail})",
        )


def _where(bucket: str, key: str | None) -> str:
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    """The first exception of `kind` in `exc`'s chain.

    boto3's transfer helpers wrap the real error: `upload_file` raises S3UploadFailedError inside
    `except ClientError` (so the ClientError is its __context__), `download_file` a RetriesExceededError
    carrying `last_exception`.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        last = getattr(current, "last_exception", None)  # boto3's RetriesExceededError
        current = last if isinstance(last, BaseException) else (current.__cause__ or current.__context__)
    return None

