"""Runs the aggregation server with uvicorn: in the foreground for `fedgrove aggregator serve`, or in a
background thread on a loopback port for tests and for the coordinator's embedded default."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn

from aggregator.access_log import redact_query_secrets
from aggregator.app import create_app
from aggregator.config import AggregatorSettings
from fedgrove_common.startup_heap import freeze_startup_objects

logger = logging.getLogger(__name__)
WS_PROTOCOL = "websockets-sansio"


def _config(settings: AggregatorSettings, *, log_level: str, own_logging: bool) -> uvicorn.Config:
    """`own_logging`: install uvicorn's logging configuration (a process of its own). Inside another program
    it must not: uvicorn's `dictConfig` closes every handler of the process (Prefect's API log handler
    blocked ~5 s draining, then stayed closed)."""
    redact_query_secrets()
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ws=WS_PROTOCOL,
        log_level=log_level,
        log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        timeout_graceful_shutdown=5,
        # Notifications are ~100-byte JSON messages: compressing them costs CPU on both sides and a zlib
        # context per connection; every client works without it (the official one offers it, not requires it).
        ws_per_message_deflate=False,
        ws_max_size=settings.ws_max_message_bytes,  # a larger frame is refused (1009) before it is buffered
        timeout_keep_alive=65,  # longer than clients keep idle connections, so a reused one is not reset
    )


class _Server(uvicorn.Server):
    """uvicorn's server, closing for good the connections still open after the graceful shutdown (a TLS
    peer that never answers the close would otherwise leave its transport to the garbage collector)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


def base_url(settings: AggregatorSettings, port: int) -> str:
    scheme = "https" if settings.ssl_certfile else "http"
    return f"{scheme}://{settings.host}:{port}"


def serve_forever(settings: AggregatorSettings) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn handles both and shuts down cleanly)."""
    config = _config(settings, log_level="info", own_logging=True)  # builds the app: may refuse to start
    freeze_startup_objects()  # the app and its modules live as long as the server: no full collection walks them
    logger.info("aggregator listening on %s (data in %s)", base_url(settings, settings.port), settings.data_dir)
    _Server(config).run()


class ServerThread:
    """The real server on a socket bound before start (port 0 = a free port), served from a thread."""

    def __init__(self, settings: AggregatorSettings, *, log_level: str = "warning") -> None:
        self.settings = settings
        self._server = _Server(_config(settings, log_level=log_level, own_logging=False))  # may refuse: no socket yet
        # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP;
        # without it every response on a kept-alive connection waits ~40 ms for the client's delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((settings.host, settings.port))
        self.port = self._socket.getsockname()[1]
        self.url = base_url(settings, self.port)
        self._server.config.port = self.port
        self._thread = threading.Thread(target=self._run, name=f"aggregator-{self.port}", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once started

    @property
    def context(self):  # type: ignore[no-untyped-def]
        return self._server.config.app.state.context

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=self._server.config.get_loop_factory()) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._socket])

    def start(self, timeout_s: float = 30) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"aggregator did not start on {self.url} within {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
