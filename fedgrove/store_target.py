"""Where a store's URL points once Prefect blocks are resolved: a local folder, or an S3 location with its
endpoint and credentials.

Why this module exists: the artifact store and the model registry live at the same URL (`FEDGROVE_ARTIFACTS`)
and must read it the same way, `block:s3-bucket/<name>` included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedgrove_common.prefect_blocks import s3_bucket_block
from fedgrove_common.s3 import S3Credentials
from fedgrove_common.store_urls import is_block_url, local_folder


@dataclass(frozen=True)
class S3Target:
    url: str  # s3://bucket/prefix
    endpoint_url: str | None
    credentials: S3Credentials | None  # None: AWS's own credential chain


def store_target(url: str | None, *, setting: str, default_dir: Path,
                 endpoint_url: str | None = None) -> Path | S3Target:
    """The folder or S3 location of `url`; ValueError (BlockNotUsable for a block) naming `setting`."""
    if is_block_url(url):
        block = s3_bucket_block(str(url), setting=setting)
        return S3Target(url=block.url, endpoint_url=block.endpoint_url, credentials=block.credentials)
    folder = local_folder(url, setting=setting, default=default_dir)
    return folder if folder is not None else S3Target(url=str(url), endpoint_url=endpoint_url, credentials=None)
