"""Where a store's URL points: a local folder or an S3 location, read the same way for every store.

`None` or "" → the store's default folder; `file:///abs/path` or a plain path → that folder;
`s3://bucket/prefix` → S3; `block:s3-bucket/<name>` → the S3 location a Prefect block names (resolved by the
pipeline, which may talk to Prefect). A one-letter scheme is a Windows drive, so a plain path.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit


BLOCK_PREFIX = "block:"


def is_block_url(url: str | None) -> bool:
    """A Prefect block reference, `block:<block-type-slug>/<block-name>`."""
    return bool(url) and str(url).startswith(BLOCK_PREFIX)


def local_folder(url: str | None, *, setting: str, default: Path) -> Path | None:
    """The folder `url` names, or None when it names an S3 location. ValueError for any other URL, naming
    `setting` (the option the user set it with)."""
    if not url:
        return default
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return None
    if parts.scheme == "file":
        if parts.netloc not in {"", "localhost"}:
            raise ValueError(f"expected {setting} like file:///abs/path, got {url!r} (fix: use three slashes)")
        return Path(unquote(parts.path))
    if len(parts.scheme) > 1:
        raise ValueError(f"expected {setting} to be a folder, file:///abs/path or s3://bucket/prefix, got {url!r}")
    return Path(url)
