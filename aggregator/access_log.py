"""Keeps the secrets that travel in query strings out of the server's log.

A WebSocket ticket (`ticket`, `request_id`) and a signed download link (`signature`) are bearer secrets for
their lifetime (30 s, 300 s): uvicorn's access log and its WebSocket lines print the full path with its
query, so anyone reading the log could replay them. A filter on those loggers replaces their values.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMETERS = ("ticket", "request_id", "signature")
_SECRET_VALUE = re.compile(rf"(?<=[?&])({'|'.join(SECRET_PARAMETERS)})=[^&\s\"']*")
LOGGERS = ("uvicorn.access", "uvicorn.error")


class RedactQuerySecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def _redacted(text: str) -> str:
    return _SECRET_VALUE.sub(r"\1=[redacted]", text) if "?" in text else text


def redact_query_secrets() -> None:
    """Install the filter on uvicorn's loggers, once per process."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactQuerySecrets) for existing in logger.filters):
            logger.addFilter(RedactQuerySecrets())
