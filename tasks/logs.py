"""The logger of the current Prefect run, or a plain one when a step runs outside a run (its function called
directly, as tests and the in-memory simulation do)."""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("fedgrove")
