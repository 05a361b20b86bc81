"""Failures that are the user's to fix, told in one line instead of a traceback.

Why this module exists: a site that lacks a column, a source that cannot be read, a spec that cannot run are
expected outcomes with a message that names the site, the thing and the fix. Prefect logs every exception
that ends a flow or task run with its traceback, so each such failure printed some forty lines per site around
one sentence. `quiet_expected_failures` keeps the sentence and drops the traceback for these exceptions (every
other exception keeps its traceback); `fedgrove --verbose` leaves Prefect's logging as it is.
"""

from __future__ import annotations

import logging

PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def expected_failures() -> tuple[type[BaseException], ...]:
    """The exception types whose message is the whole story."""
    from fedgrove.documents import DocumentExchangeError
    from fedgrove.newton import NewtonError
    from fedgrove.schema import FederationRefused
    from fedgrove.secagg_errors import SecureAggregationError
    from fedgrove.site_config import SiteNotConfigured
    from fedgrove.sources import SourceError
    from fedgrove.spec import SpecError

    return (FederationRefused, SourceError, SpecError, SiteNotConfigured, DocumentExchangeError, NewtonError,
            SecureAggregationError)


class DropExpectedTracebacks(logging.Filter):
    def __init__(self, types: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.types = types

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and isinstance(exc, self.types):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_failures(also: tuple[type[BaseException], ...] = ()) -> None:
    """Install the filter on Prefect's run loggers (idempotent); `also`: more types, from the layers above."""
    types = expected_failures() + also
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropExpectedTracebacks) for f in logger.filters):
            logger.addFilter(DropExpectedTracebacks(types))
