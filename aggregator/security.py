"""Session tokens, admin token and signed download links.

Session tokens are shown once and stored only as SHA-256 hashes (they are 256-bit random values, so a
plain hash is enough); comparisons are constant-time. Download links for the local blob store carry an
HMAC over the file id and the expiry, because the official client fetches them without credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from aggregator.errors import Forbidden


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def load_or_create_secret(path: Path) -> str:
    """Read a secret kept beside the data, creating it (mode 0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


class UrlSigner:
    def __init__(self, key: str) -> None:
        self._key = key.encode("utf-8")

    def signature(self, file_id: str, expires: int) -> str:
        message = f"{file_id}:{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, file_id: str, *, ttl_s: int) -> str:
        expires = int(time.time()) + ttl_s
        return f"expires={expires}&signature={self.signature(file_id, expires)}"

    def verify(self, file_id: str, *, expires: int, signature: str) -> None:
        # bytes, not str: compare_digest refuses non-ASCII text, and a query string can hold any
        if not hmac.compare_digest(self.signature(file_id, expires).encode(), signature.encode("utf-8", "replace")):
            raise Forbidden("invalid download signature")
        if expires < time.time():
            raise Forbidden("download link expired")
