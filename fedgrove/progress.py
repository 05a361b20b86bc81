"""A Prefect progress artifact that is updated without slowing the training down.

`update_progress_artifact` is a blocking call to the Prefect API. In the demo the reporting leaf made it once per
round while the API was busy recording 25 task runs a round: py-spy put 44% of that leaf's wall time in it, and
because every leaf waits for the slowest one at each aggregation, the whole federation waited too.
`ProgressReporter` sends from a background thread and only the newest value, so a slow API delays the bar, not
the rounds; and at most one update a second, so a run of short rounds does not make an API call (and an event
on the server) every round. `close()` sends the last value and waits for it (bounded), so a finished run shows
where it ended.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import update_progress_artifact


class ProgressReporter:
    """Report progress (0–100) to one progress artifact; `report` never blocks on the API."""

    def __init__(self, artifact_id: str | UUID, *, logger: logging.Logger | logging.LoggerAdapter,
                 min_interval_s: float = 1.0) -> None:
        try:
            self.artifact_id = UUID(str(artifact_id))
        except ValueError:
            raise ValueError(f"progress artifact id {str(artifact_id)!r} is not a UUID "
                             "(fix: pass the id that create_progress_artifact returned)") from None
        self.logger = logger
        self.min_interval_s = min_interval_s
        self._changed = threading.Condition()
        self._latest: float | None = None
        self._closing = False
        context = contextvars.copy_context()  # the caller's Prefect settings and API client
        self._thread = threading.Thread(
            target=context.run, args=(self._send_newest,), name="progress-reporter", daemon=True
        )
        self._thread.start()

    def report(self, percent: float) -> None:
        with self._changed:
            self._latest = percent
            self._changed.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Send the last reported value (if not sent yet) and stop; gives up after `timeout_s`."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.logger.warning("progress artifact %s: the last update did not finish within %g s",
                                self.artifact_id, timeout_s)

    def _send_newest(self) -> None:
        next_send = time.monotonic()
        while True:
            with self._changed:
                while not self._closing and (self._latest is None or time.monotonic() < next_send):
                    self._changed.wait(None if self._latest is None else max(0.0, next_send - time.monotonic()))
                percent, self._latest = self._latest, None
                closing = self._closing
            if percent is not None:
                try:
                    update_progress_artifact(self.artifact_id, percent)
                except Exception as exc:  # the bar is decoration: a failed update must not fail the training
                    self.logger.warning("progress artifact %s: update to %.0f%% failed: %s",
                                        self.artifact_id, percent, exc)
                next_send = time.monotonic() + self.min_interval_s  # from the end of this call to the next
            if closing and percent is None:
                return


RoundListener = Callable[[str, str, int, int], None]
_listeners: list[RoundListener] = []
_listeners_lock = threading.Lock()


def add_round_listener(listener: RoundListener) -> Callable[[], None]:
    """Call `listener(run_id, site, round, rounds)` whenever an in-process leaf finishes a round (the CLI's
    progress bar); returns a function that removes it."""
    with _listeners_lock:
        _listeners.append(listener)

    def remove() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return remove


def round_finished(run_id: str, site: str, round_number: int, rounds: int) -> None:
    """Tell this process's listeners; a listener that fails is dropped (progress is decoration)."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(run_id, site, round_number, rounds)
        except Exception:
            with _listeners_lock:
                if listener in _listeners:
                    _listeners.remove(listener)
