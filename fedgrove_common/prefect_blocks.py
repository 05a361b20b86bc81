"""Prefect blocks as stores: `block:s3-bucket/<name>` wherever fedgrove takes an `s3://` URL (the pipeline's
stores, a site's table, the aggregator's blob store); prefect-aws is imported only when a block is named.

Why this module exists: Prefect users keep a bucket and its credentials in an `S3Bucket` block (prefect-aws)
with an `AwsCredentials` block inside, edited in the UI and shared by every worker, instead of AWS variables
in each worker's environment. This module turns such a reference into what the stores need: the bucket and
folder as an `s3://` URL, the endpoint (the credentials' `aws_client_parameters.endpoint_url`, for
S3-compatible servers) and the credentials themselves, taken from the block's own boto3 session so that a
profile or an assumed role works as Prefect resolves it. The secret key goes from the block to the client and
nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrove_common.s3 import S3Credentials
from fedgrove_common.store_urls import BLOCK_PREFIX

S3_BUCKET_TYPE = "s3-bucket"


class BlockNotUsable(ValueError):
    """A `block:` reference that names no usable block; the message names it and the fix."""


@dataclass(frozen=True)
class S3BucketBlock:
    url: str  # s3://bucket/folder
    endpoint_url: str | None
    credentials: S3Credentials

    def __repr__(self) -> str:
        return f"S3BucketBlock(url={self.url!r}, endpoint_url={self.endpoint_url!r})"


def s3_bucket_block(reference: str, *, setting: str) -> S3BucketBlock:
    """The S3 location and credentials of `block:s3-bucket/<name>`, loaded from the Prefect API."""
    block_type, _, name = reference.removeprefix(BLOCK_PREFIX).partition("/")
    if block_type != S3_BUCKET_TYPE or not name or "/" in name:
        raise BlockNotUsable(f"expected {setting} like block:{S3_BUCKET_TYPE}/<block-name>, got {reference!r} (fix: "
                             "name an S3Bucket block, e.g. block:s3-bucket/fedgrove-runs)")
    try:
        from prefect_aws import S3Bucket
    except ImportError as exc:
        raise BlockNotUsable(f"{setting} names a Prefect S3Bucket block, but prefect-aws is not installed (fix: "
                             "pip install 'fedgrove[blocks]')") from exc
    try:
        block = S3Bucket.load(name, _sync=True)
    except ValueError as exc:
        raise BlockNotUsable(f"{setting} names the S3Bucket block {name!r}, but the Prefect API has no such block "
                             f"(fix: create it, e.g. S3Bucket(bucket_name=..., credentials=...).save({name!r}), or "
                             "check PREFECT_API_URL)") from exc
    session = block.credentials.get_boto3_session()
    frozen = session.get_credentials()
    frozen = frozen.get_frozen_credentials() if frozen is not None else None
    parameters = getattr(block.credentials, "aws_client_parameters", None)
    folder = (block.bucket_folder or "").strip("/")
    return S3BucketBlock(
        url=f"s3://{block.bucket_name}/{folder}" if folder else f"s3://{block.bucket_name}",
        endpoint_url=getattr(parameters, "endpoint_url", None),
        credentials=S3Credentials(
            access_key_id=frozen.access_key if frozen else None,
            secret_access_key=frozen.secret_key if frozen else None,
            session_token=frozen.token if frozen else None,
            region_name=session.region_name,
        ),
    )
