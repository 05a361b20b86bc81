"""Counting categories across sites without naming the rare ones.

Why this module exists: a category is kept when it occurs at least `min_category_count` times summed over
all sites. Sites could simply list their categories with counts, but a category seen once (a rare
diagnosis, a small village) can point at one person. So each site first adds its counts into a fixed
number of buckets (a keyed hash of the category picks the bucket); the server sums the buckets. A site
then names only those of its own categories whose bucket reached the threshold. Buckets over-count when
two categories share one, so a rare category can, rarely, be named; the exact counts of the named
candidates are summed next, and only those decide which categories are kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

BUCKETS = 4096


def bucket_of(category: str, *, key: bytes) -> int:
    digest = hashlib.blake2b(category.encode("utf-8"), key=key, digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


def sketch(counts: Mapping[str, int], *, key: bytes) -> np.ndarray:
    """Bucket counts (int64, shape (BUCKETS,)) of one column's categories at this site."""
    buckets = np.zeros(BUCKETS, dtype=np.int64)
    for category, count in counts.items():
        buckets[bucket_of(category, key=key)] += count
    return buckets


def frequent_candidates(
    counts: Mapping[str, int], pooled_buckets: np.ndarray, *, threshold: int, key: bytes
) -> list[str]:
    """This site's categories whose pooled bucket reached `threshold` (a superset of the truly frequent)."""
    return sorted(c for c in counts if pooled_buckets[bucket_of(c, key=key)] >= threshold)


def value_counts(categories: pd.Series) -> dict[str, int]:
    """Counts of canonical category strings (as from `fedgrove.values.category_strings`)."""
    return {str(k): int(v) for k, v in categories.value_counts(sort=False).items()}


def exact_counts(counts: Mapping[str, int], candidates: Iterable[str]) -> np.ndarray:
    """This site's count of each candidate, in the candidates' order (int64)."""
    return np.array([counts.get(c, 0) for c in candidates], dtype=np.int64)


def sketch_key(spec_fingerprint: str) -> bytes:
    """The hash key: the same at every site of a federation, different between federations."""
    return hashlib.sha256(f"fedgrove-categories:{spec_fingerprint}".encode()).digest()[:32]
