"""Key agreement for secure aggregation: X25519 key pairs, their public halves shared, pairwise secrets.

Why this module exists: pairwise masks cancel only if both sites of a pair derive the same secret, and hide
a site's upload only if nobody else (the server included) can derive it. Once per run each site makes an
X25519 key pair and shares its public key as a small document (`fedgrove.documents`: each site writes its
own row of a matrix the server sums, so the server sees public keys only). Every site checks the list it
receives against the roster, then derives one 32-byte secret per peer: X25519, then HKDF-SHA256 whose
`info` binds the run id and both site names (sorted) and whose salt binds both public keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedgrove.secagg_errors import SecureAggregationError

KEY_BYTES = 32
PUBLIC_KEY_FIELD = "x25519_public_key"
_PAIR_LABEL = "fedgrove-secagg-pair-v1"
_FIX_SAME_RUN = "fix: give every site the same list of sites, run one leaf per site, all of the same fedgrove version"


@dataclass(frozen=True)
class SiteKeys:
    """One site's key pair for one run; `public` is the raw 32-byte X25519 public key."""

    site: str
    private: X25519PrivateKey
    public: bytes


def make_keys(site: str) -> SiteKeys:
    """A fresh X25519 key pair for `site` (from the operating system's random source)."""
    private = X25519PrivateKey.generate()
    return SiteKeys(site=site, private=private, public=private.public_key().public_bytes_raw())


def public_key_document(keys: SiteKeys) -> dict[str, str]:
    """What the site shares through `fedgrove.documents.document_fields`: its name and public key, no secret."""
    return {"site": keys.site, PUBLIC_KEY_FIELD: keys.public.hex()}


def _key_format_problem(value: Any) -> str | None:
    if value is None:
        return f"no {PUBLIC_KEY_FIELD!r} field"
    if not isinstance(value, str):
        return f"a value of type {type(value).__name__}"
    if len(value) != 2 * KEY_BYTES:
        return f"{len(value)} characters"
    try:
        bytes.fromhex(value)
    except ValueError:
        return "characters that are not hexadecimal"
    return None


def read_public_keys(documents: Mapping[str, Mapping[str, Any]], roster: Sequence[str]) -> dict[str, bytes]:
    """Every site's 32-byte public key, by site, from the documents `fedgrove.documents.read_documents` read;
    refused unless there is exactly one well-formed key per site of the roster, signed with that site's name."""
    expected = sorted(roster)
    if len(documents) != len(expected):
        raise SecureAggregationError(
            f"expected public keys from {len(expected)} sites ({', '.join(expected)}), got {len(documents)} "
            f"({', '.join(sorted(documents))}) ({_FIX_SAME_RUN})")
    keys: dict[str, bytes] = {}
    for site in expected:
        document = documents.get(site)
        if document is None:
            raise SecureAggregationError(
                f"expected a public key from site {site!r}, got none; keys came from "
                f"{', '.join(repr(name) for name in sorted(documents))} ({_FIX_SAME_RUN})")
        signed = document.get("site")
        if signed != site:
            raise SecureAggregationError(
                f"expected site {site!r}'s key document to be signed {site!r}, got {signed!r} ({_FIX_SAME_RUN})")
        problem = _key_format_problem(document.get(PUBLIC_KEY_FIELD))
        if problem:
            raise SecureAggregationError(
                f"expected site {site!r}'s public key as {2 * KEY_BYTES} hexadecimal characters ({KEY_BYTES} bytes of "
                f"X25519), got {problem} ({_FIX_SAME_RUN})")
        keys[site] = bytes.fromhex(document[PUBLIC_KEY_FIELD])
    owners: dict[bytes, str] = {}
    for site, key in keys.items():
        if key in owners:
            raise SecureAggregationError(
                f"expected a different public key from every site, got the same key from {owners[key]!r} and {site!r} "
                "(fix: each site must make its own key pair for the run)")
        owners[key] = site
    return keys


def pair_secrets(keys: SiteKeys, public_keys: Mapping[str, bytes], *, run_id: str) -> dict[str, bytes]:
    """One 32-byte secret per peer, the same at both ends of each pair and derivable by nobody else."""
    if public_keys.get(keys.site) != keys.public:
        raise SecureAggregationError(
            f"expected the key exchange to hold site {keys.site!r}'s own public key, got "
            f"{'none' if keys.site not in public_keys else 'another one'} (fix: restart the run's key exchange; "
            f"make sure only one leaf runs as {keys.site!r})")
    secrets: dict[str, bytes] = {}
    for peer, public in sorted(public_keys.items()):
        if peer == keys.site:
            continue
        try:
            shared = keys.private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            raise SecureAggregationError(
                f"expected site {peer!r}'s public key to be a usable X25519 key, got one that yields no shared secret "
                f"(fix: restart the run's key exchange; site {peer!r} must send a key made by make_keys)") from None
        first, second = sorted([keys.site, peer])
        salt = public_keys[first] + public_keys[second]
        info = json.dumps([_PAIR_LABEL, run_id, first, second]).encode()
        secrets[peer] = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(shared)
    return secrets
