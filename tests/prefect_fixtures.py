"""A temporary Prefect API (SQLite) for the whole session, so flows under test run as they do for users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run's scratch in tmp_path/work and its outputs in tmp_path/runs, with no aggregator, leaf credentials,
    spec or site data taken from the developer's environment."""
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_SPEC", "FEDGROVE_SITE_DATA"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path
