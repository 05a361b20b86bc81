"""Pseudo-random streams for secure aggregation: pairwise masks and the checksum's public coefficients.

Why this module exists: a pair's masks must be the same at both sites, fresh every round, and unpredictable
to anyone without the pair's secret. Each is a ChaCha20 key stream (from `cryptography`) under a key that
HKDF-SHA256 derives from the pair secret with the run id, the round and a stream name in `info`; every
key is used once, so the all-zero nonce is safe. The checksum's coefficients must be the same at every site
and need no secret: a ChaCha20 stream keyed by SHA-256 of the run id and the round.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_MASK_LABEL = "fedgrove-secagg-mask-v1"
_CHECKSUM_LABEL = "fedgrove-secagg-checksum-v1"
_NONCE = bytes(16)


def _stream(key: bytes, count: int, mask: np.uint64) -> np.ndarray:
    """`count` uint64 words of ChaCha20 key stream, each reduced to [0, 2^L) by `mask` (2^L - 1)."""
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(bytes(8 * count)), dtype="<u8").astype(np.uint64)
    return words & mask


def pair_mask(secret: bytes, *, run_id: str, round_number: int, stream: str, count: int,
              mask: np.uint64) -> np.ndarray:
    """The pair's mask for one round: `count` integers in [0, 2^L), the same at both sites of the pair."""
    info = json.dumps([_MASK_LABEL, run_id, round_number, stream]).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    return _stream(key, count, mask)


def checksum_coefficients(*, run_id: str, round_number: int, count: int, mask: np.uint64) -> np.ndarray:
    """Public pseudo-random coefficients in [0, 2^L), the same at every site for the run and round."""
    key = hashlib.sha256(json.dumps([_CHECKSUM_LABEL, run_id, round_number]).encode()).digest()
    return _stream(key, count, mask)


def checksum(values: np.ndarray, coefficients: np.ndarray, mask: np.uint64) -> np.uint64:
    """sum(coefficient * value) modulo 2^L: uint64 arithmetic wraps modulo 2^64, a multiple of 2^L."""
    return np.uint64(np.sum(values * coefficients, dtype=np.uint64) & mask)
