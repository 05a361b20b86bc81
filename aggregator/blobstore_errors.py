"""Errors of the blob store, apart from the stores so that callers can catch them without importing boto3.

    BlobStoreError            anything the blob store could not do
    ├── BlobNotFound          no blob under that key (the store itself is fine)
    ├── InvalidBlobKey        a key outside [A-Za-z0-9._-]{1,128}, or "." / ".."; never reaches the disk
    └── BlobStoreUnavailable  the store cannot be used at all: a missing bucket, refused credentials,
                              an S3 endpoint that does not answer

boto3's errors are translated into these at the store's boundary (`raise BlobNotFound(...) from exc`).
"""

from __future__ import annotations


class BlobStoreError(Exception):
    pass


class BlobNotFound(BlobStoreError):
    def __init__(self, key: str, *, where: str) -> None:
        super().__init__(f"expected a blob with key {key!r} in {where}, got none")
        self.key = key


class InvalidBlobKey(BlobStoreError):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"expected a blob key of 1-128 characters from [A-Za-z0-9._-], not '.' or '..', got {key!r}"
        )
        self.key = key


class BlobStoreUnavailable(BlobStoreError):
    pass
