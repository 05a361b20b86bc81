"""Session tokens, admin token and signed download links.

Session tokens are shown once and stored only as SHA-256 hashes (they are 256-bit random values, so a
plain hash is enough); comparisons are constant-time. Download links for the local blob store carry an
HMAC over the file id and the expiry, because the official client fetches them without credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from aggregator.errors import Forbidden
from fedgrove_common.atomic_files import create_durably

MIN_SECRET_CHARS = 32


class WeakSecret(ValueError):
    """A secret the server would start with is empty or too short to guess at: it refuses to start."""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def checked_secret(value: str, *, source: str) -> str:
    """`value`, unless it is shorter than `MIN_SECRET_CHARS`: then WeakSecret naming `source` (a file or a
    variable). An empty file is what a crash or a full disk right after creating it, a `touch` or an empty
    mounted secret leaves: with it the admin API would take an empty token and links an empty key."""
    if len(value) < MIN_SECRET_CHARS:
        raise WeakSecret(
            f"expected a secret of at least {MIN_SECRET_CHARS} characters in {source}, got {len(value)} (fix: "
            f"delete the file to have the server write a new one, or write at least {MIN_SECRET_CHARS} random "
            "characters to it)"
        )
    return value


def load_or_create_secret(path: Path) -> str:
    """Read a secret kept beside the data, creating it on first use: written whole or not at all (mode 0600,
    fsynced), never over one another process wrote first. WeakSecret if the file holds too short a one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        create_durably(path, (new_token() + "\n").encode())
    return checked_secret(path.read_text().strip(), source=str(path))


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
