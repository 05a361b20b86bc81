"""What the official SDKs print, sent to the debug log instead of the user's terminal.

Why this module exists: the `branchkey` client prints a line per download ("downloaded file ...", 250 in a
50-round demo), per performance report and per WebSocket start, and the AskAnna SDK prints a notice at exit
when it runs outside an AskAnna run. Real progress drowned in them. Both call the built-in `print` (or
`click.echo`) from their own modules, so a module-level name in those modules shadows it: every such line
goes to the `fedgrove.sdk` logger at DEBUG instead, from any thread. `fedgrove --verbose` leaves the SDKs
as they are.
"""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

logger = logging.getLogger("fedgrove.sdk")

_PRINTING_MODULES = ("branchkey.client", "branchkey._ws_consumer")
_ECHOING_MODULES = ("askanna.core.collector",)


def _to_debug_log(*values: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
    del end, flush
    if file is not None and file not in (sys.stdout, sys.stderr):
        print(*values, sep=sep, file=file)
        return
    logger.debug(sep.join(str(v) for v in values))


def _echo_to_debug_log(message: Any = None, *args: Any, **kwargs: Any) -> None:
    del args, kwargs
    logger.debug("%s", message)


def route_sdk_output_to_debug_log() -> None:
    """Send the SDKs' prints to the debug log (idempotent; imports the SDK modules)."""
    import importlib

    for name in _PRINTING_MODULES:
        importlib.import_module(name).print = _to_debug_log  # type: ignore[attr-defined]
    for name in _ECHOING_MODULES:
        importlib.import_module(name).click = SimpleNamespace(echo=_echo_to_debug_log)  # type: ignore[attr-defined]
