"""Prefect's temporary server for a one-command run (`fedgrove demo`) when the user configured no Prefect API.

Prefect's ephemeral mode would start one at the first flow. `TemporaryPrefectServer` runs the same server the
same way (uvicorn on `prefect.server.api.server:create_app` in a child process, UI off), with these measured
differences:
- The demo starts it as its first step, so its boot (~5 s here) overlaps the pipeline's imports. This process
  never imports Prefect's server package (~3.5 s here); Prefect's mode imports it only to start the child.
  Deciding whether a temporary server is wanted needs Prefect's settings, whose import takes ~1.1 s, so the
  demo starts one on what the environment alone says (`start_before_prefect_settings`) and settles the
  question once the settings are read (`temporary_server_for`): a server the settings do not want is
  stopped before anything used it.
- Its database is in memory unless the user asks for a file or configured one. Prefect's default SQLite file
  answers this pipeline's load (five leaf flows in threads, every task run recorded from events) with
  "database is locked": the server turns that into a 503, and the client retries after 2, 4, 8, 16 s. A demo
  lost 6 s starting its leaves and 16 s starting its baselines that way. An in-memory database has one
  connection, so the server's writes queue instead of failing. The price: the run's history ends with the
  process (`FEDGROVE_PREFECT_EPHEMERAL_DATABASE=file` keeps it in `$PREFECT_HOME/prefect.db`).
- It stops after Prefect's client services have sent what they hold, so nothing retries against a stopped
  server. An in-memory server gets no 5 s grace: its database ends with it anyway.
- On Linux it ends with this process even on SIGKILL.
- In memory, nobody can open its UI or query it after the run, so it keeps no event feed and evaluates no
  automations (it has none): Prefect's event persister and triggers are off. It still records every flow and
  task run, but in batches: Prefect's task-run recorder writes each state change in a transaction of its own
  by default (batch size 1), here up to 200 at a time, at least once a second. In a profiled demo (py-spy)
  the recorder's one-by-one inserts held 63% of the server's CPU samples and the two services 17%; with
  all three settings the server used 16 s of CPU instead of 37 s. The environment can set each of them back.
- Its in-memory database starts from a migrated copy (`fedgrove/prefect_server_app.py`) instead of running
  all of Prefect's migrations at every start: ready after 6–7 s instead of 16–19 s (the first start on a
  machine builds the copy: ~22 s).
- Its flow runs send no heartbeats (unless `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` is set): a heartbeat lets a
  server that outlives a run mark it crashed, and this one ends with the run. Prefect's heartbeat thread
  sleeps in steps of 1 s and every flow run waited for it at its end: up to 1 s for the leaves, again for the
  coordinator.
- Its WebSockets are not compressed. Every task run sends its state changes over the events socket, and on
  loopback per-message deflate only costs CPU on both ends: with it, 13% of the samples of the demo's Prefect
  client thread were in `PerMessageDeflate.encode`; without it, the Prefect floor of `bench/end_to_end.py`
  used 24–30 s of CPU instead of 33–37 s (two runs each).

Nothing changes when the user configured Prefect: an API URL (a real or Cloud server) means no temporary
server, and a database URL of their own (`PREFECT_SERVER_DATABASE_CONNECTION_URL`, the older
`PREFECT_API_DATABASE_CONNECTION_URL`, or one in the active profile) is the one the server uses.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fedgrove_common.child_process import ended_with_this_process, free_loopback_port, wait_until_healthy

if TYPE_CHECKING:
    from prefect.settings import Settings

IN_MEMORY_URL = "sqlite+aiosqlite:///file::memory:?cache=shared&uri=true&check_same_thread=false"
DATABASE_VARIABLE = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
DATABASE_VARIABLES = (DATABASE_VARIABLE, "PREFECT_API_DATABASE_CONNECTION_URL")


# What Prefect's SubprocessASGIServer sets for its temporary server.
TEMPORARY_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# A server that lives for one command reports nothing home (offline it printed "Failed to send telemetry").
QUIET_BY_DEFAULT = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
# An in-memory server nobody can look at keeps no event feed, has no automations to trigger, and records
# task runs in batches (at most a second late) instead of one database transaction per state change.
UNWATCHED_BY_DEFAULT = {"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
                        "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
                        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
                        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1"}
# A flow run's heartbeat lets a server that outlives the run mark it crashed; this server ends with the run.
HEARTBEAT_VARIABLE = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
SERVER_APP_FACTORY = "prefect.server.api.server:create_app"
PORT_IN_USE_EXIT_CODE = 3  # uvicorn's exit code when it cannot bind


def prefect_site_packages() -> Path:
    """The folder Prefect is installed in, found without importing Prefect."""
    found = importlib.util.find_spec("prefect")
    if found is None or found.origin is None:
        raise TemporaryServerError("Prefect is not installed in this environment (fix: pip install the project)")
    return Path(found.origin).parents[1]


class TemporaryServerError(RuntimeError):
    """Prefect's temporary server did not come up."""


def own_database_configured(settings: Settings) -> bool:
    """A Prefect database URL of the user's own, in the environment or the active Prefect profile."""
    return any(os.environ.get(name) for name in DATABASE_VARIABLES) or (
        "connection_url" in settings.server.database.model_fields_set
    )


class TemporaryPrefectServer:
    """Prefect's temporary API server for one run; `start()` returns at once, `serving()` waits for it,
    points this process's Prefect client at it and stops it afterwards."""

    def __init__(self, *, in_memory: bool, startup_timeout_s: float = 180.0) -> None:
        self.in_memory = in_memory
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> TemporaryPrefectServer:
        self.port = free_loopback_port()
        env = {**QUIET_BY_DEFAULT, **(UNWATCHED_BY_DEFAULT if self.in_memory else {}), **os.environ,
               **TEMPORARY_SERVER_ENV}
        if self.in_memory:
            env[DATABASE_VARIABLE] = IN_MEMORY_URL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_site_packages()),
             "--factory", "fedgrove.prefect_server_app:create_app" if self.in_memory else SERVER_APP_FACTORY,
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on",
             "--ws-per-message-deflate", "false"],
            env=env,
            preexec_fn=ended_with_this_process(),
            start_new_session=True,  # a terminal's Ctrl-C reaches the run, which stops this server after it
        )
        return self

    def wait_until_ready(self) -> None:
        assert self.process is not None, "start() first"

        def check_process() -> None:
            assert self.process is not None
            code = self.process.poll()
            if code == PORT_IN_USE_EXIT_CODE:  # another program took the port first: as Prefect, try another
                self.start()
            elif code is not None:
                raise TemporaryServerError(
                    f"Prefect's temporary server on {self.api_url} exited with code {code} before it answered "
                    "(its error is printed above; fix it, or set PREFECT_API_URL to a running Prefect server)"
                )

        if not wait_until_healthy(lambda: f"{self.api_url}/health", timeout_s=self.startup_timeout_s,
                                  interval_s=0.1, check_process=check_process):
            self.stop()
            raise TemporaryServerError(
                f"Prefect's temporary server on {self.api_url} did not answer within {self.startup_timeout_s:g} s "
                "(fix: set PREFECT_API_URL to a running Prefect server, e.g. `prefect server start`)"
            )

    def stop(self) -> None:
        """Send what Prefect's client services still hold, then end the server: at once when its database is
        in memory, after up to 10 s of graceful shutdown when it writes a file."""
        if self.process is None:
            return
        if self.process.poll() is None:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            EventsWorker.drain_all(timeout=10)
            APILogWorker.drain_all(timeout=10)
            self.process.terminate()
            try:
                self.process.wait(timeout=1 if self.in_memory else 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @contextmanager
    def serving(self) -> Iterator[str]:
        """Wait until the server answers, run the body with Prefect's client on it, then stop it."""
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        updates: dict = {PREFECT_API_URL: self.api_url}
        if HEARTBEAT_VARIABLE not in os.environ:
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        try:
            self.wait_until_ready()
            with temporary_settings(updates=updates):
                yield self.api_url
        finally:
            self.stop()


def start_before_prefect_settings() -> TemporaryPrefectServer | None:
    """An in-memory temporary server, started on what the environment alone says, before Prefect is imported;
    None when the environment names a Prefect API, a database of the user's own, or the file mode.

    Only the in-memory kind starts this early: stopping it, should the settings not want it, loses nothing."""
    if os.environ.get("PREFECT_API_URL") or any(os.environ.get(name) for name in DATABASE_VARIABLES):
        return None
    if os.environ.get("FEDGROVE_PREFECT_EPHEMERAL_DATABASE", "memory").strip().lower() != "memory":
        return None
    return TemporaryPrefectServer(in_memory=True).start()


def temporary_server_for(
    mode: Literal["memory", "file"], *, started: TemporaryPrefectServer | None = None
) -> TemporaryPrefectServer | None:
    """The temporary server Prefect would start for the first flow (no API URL configured, ephemeral mode
    on); None otherwise. Its database is in memory unless `mode` is "file" or the user configured a database
    of their own. `started` (from `start_before_prefect_settings`) is returned when it is the one wanted, and
    stopped otherwise; any other server is returned not started yet."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    wanted = None
    if not settings.api.url and settings.server.ephemeral.enabled:
        wanted = TemporaryPrefectServer(in_memory=mode == "memory" and not own_database_configured(settings))
    if started is not None:
        if wanted is not None and wanted.in_memory == started.in_memory:
            return started
        started.stop()
    return wanted
