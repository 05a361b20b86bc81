"""Makes finishing an aggregation fail once, as when the blob store is down while the aggregate is written."""

from __future__ import annotations

import pytest

from aggregator.blobstore_errors import BlobStoreUnavailable


def finalise_fails_once(target: object, monkeypatch: pytest.MonkeyPatch, message: str) -> list[str]:
    """Patch `target._finalise` (an `AggregationService`, or the class for every server started after) to
    raise `BlobStoreUnavailable(message)` on its first call and work from then on. Returns the list that
    records the failure, for the test to assert that it happened."""
    finalise = target._finalise  # type: ignore[attr-defined]
    failures: list[str] = []

    def store_down_once(*args: object) -> str:
        if not failures:
            failures.append(message)
            raise BlobStoreUnavailable(message)
        return finalise(*args)

    monkeypatch.setattr(target, "_finalise", store_down_once)
    return failures
