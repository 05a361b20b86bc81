"""Task options shared by the pipeline's tasks (retry back-off, no input caching)."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE

RETRY_DELAYS_S = [2, 5, 15]

# Inputs are arrays, clients and models: hashing them for a cache key costs time and buys nothing.
TRANSIENT = {"retries": 3, "retry_delay_seconds": RETRY_DELAYS_S, "cache_policy": NO_CACHE}
LOCAL = {"cache_policy": NO_CACHE}
