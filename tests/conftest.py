"""Shared test set-up: quiet, offline Prefect and the fixtures of the real servers the tests start."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

pytest_plugins = [
    "tests.aggregator_fixtures",
    "tests.prefect_fixtures",
    "tests.prefect_server",
    "tests.s3_server",
    "tests.seaweed_server",
    "tests.postgres_server",
    "tests.database_backends",
]

# Fuzz tests replay the same examples on every run (CI included): a failure is a reproducible bug, never luck.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("fedgrove", derandomize=True)
_hypothesis_settings.load_profile("fedgrove")


import pytest  # noqa: E402


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI tables one row per line: the CLI's console takes its width once, whatever COLUMNS says later."""
    from fedgrove_cli.console import console

    monkeypatch.setattr(console, "width", 200)
