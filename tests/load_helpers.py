"""What the load and fuzz tests of the aggregation server share: a response-status counter wrapped around the
real app, a trap for the server's error logs, the file-descriptor limit, latency percentiles, the RSS of a
server process, and a pool of idle WebSocket connections held open from one asyncio loop in a thread.

Its length (~370 lines) is the instruments listed above, used together by the load and fuzz modules.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import resource
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psutil
from branchkey import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator.registry import LeafCredentials
from aggregator.server import ServerThread
from tests.aggregator_process import AggregatorProcess
from tests.upload_helpers import auth_headers

# --- every response the server sends --------------------------------------------------------------


@dataclass
class StatusCounts:
    """HTTP statuses by (method, route), WebSocket handshakes, and exceptions that escaped the app's handlers."""

    http: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    websocket: Counter[str] = field(default_factory=Counter)
    escaped: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def statuses(self) -> Counter[int]:
        with self._lock:
            totals: Counter[int] = Counter()
            for (_method, _route, status), count in self.http.items():
                totals[status] += count
            return totals

    def server_errors(self) -> dict[tuple[str, str, int], int]:
        with self._lock:
            return {key: count for key, count in self.http.items() if key[2] >= 500}


def _route(path: str) -> str:
    """The path without the ids in it, so counts group by endpoint."""
    for prefix in ("/api/v1/run/", "/api/v1/config/branch/", "/api/v1/file/download/", "/blobs/",
                   "/admin/v1/branches/"):
        if path.startswith(prefix):
            return prefix + "{id}"
    return path


class CountStatuses:
    """An ASGI middleware that counts every status the app answers with.

    Added inside Starlette's `ServerErrorMiddleware`, it sees an unhandled exception go past rather than
    the 500 that middleware then sends; it counts the exception as a 500 and records its type.
    """

    def __init__(self, app: ASGIApp, *, counts: StatusCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "WS")
        route = _route(scope["path"])

        async def counting_send(message: Message) -> None:
            with self.counts._lock:
                if message["type"] == "http.response.start":
                    self.counts.http[(method, route, message["status"])] += 1
                elif message["type"] == "websocket.accept":
                    self.counts.websocket["accepted"] += 1
                elif message["type"] == "websocket.close":
                    self.counts.websocket[f"closed {message.get('code', 1000)}"] += 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as exc:
            with self.counts._lock:
                self.counts.http[(method, route, 500)] += 1
                self.counts.escaped.append(f"{method} {scope['path'][:200]}: {type(exc).__name__}: {exc}"[:500])
            raise


def counted(server: ServerThread, counts: StatusCounts) -> StatusCounts:
    """Wrap `counts` around a server's app; call before `start()` (Starlette refuses it afterwards)."""
    server.context  # noqa: B018 - fails early if the app is not built
    app = server._server.config.app  # the FastAPI app ServerThread built; no public handle to it exists
    app.add_middleware(CountStatuses, counts=counts)
    return counts


class ErrorLogTrap(logging.Handler):
    """Collects ERROR records of the server's loggers: "aggregator", and "uvicorn", which does not propagate
    to the root logger ("uvicorn.error" propagates to it)."""

    LOGGERS = ("aggregator", "uvicorn")

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}"[:500])

    @contextmanager
    def installed(self) -> Iterator[ErrorLogTrap]:
        loggers = [logging.getLogger(name) for name in self.LOGGERS]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)


_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def access_log_statuses(log_text: str) -> Counter[tuple[str, str, int]]:
    """(method, route, status) of every line of uvicorn's access log in a server's output."""
    counts: Counter[tuple[str, str, int]] = Counter()
    for match in _ACCESS_LINE.finditer(log_text):
        path = match["path"].split("?", 1)[0]
        counts[(match["method"], _route(path), int(match["status"]))] += 1
    return counts


# --- the machine ----------------------------------------------------------------------------------


def ensure_fd_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to `needed` if it is lower (children inherit it).

    Returns the (soft, hard) limits now in force; fails if the hard limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"expected a file-descriptor limit of at least {needed}, got hard limit {hard} "
                               f"(fix: raise it with `ulimit -Hn {needed}` as root)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of `values` (nearest-rank), rounded to the millisecond."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    return {
        "p50": round(rank(50), 3),
        "p90": round(rank(90), 3),
        "p99": round(rank(99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


# --- official clients in threads of one process ---------------------------------------------------

_NPZ_CHECKS = threading.Lock()


def take_turns_checking_archives(client: Client, lock: threading.Lock | None = None) -> Client:
    """Make the client's pre-upload archive checks take turns with every other thread's.

    `Client.file_upload` opens the archive with `np.load` (twice) before it sends it; numpy parses each
    `.npy` header with `ast.literal_eval`, and CPython 3.11 can raise "SystemError: AST constructor
    recursion depth mismatch" when threads of one process build ASTs at the same time (python/cpython#106905).
    Many leaves in threads of one process would meet that; a process with one leaf never does. Pass the
    server's own header lock when the server runs in this process too.
    """
    lock = lock or _NPZ_CHECKS
    for name in ("validate_weight_shape", "_read_declared_kind"):
        method = getattr(client, name)

        def in_turn(*args: object, _method=method, **kwargs: object) -> object:  # type: ignore[no-untyped-def]
            with lock:
                return _method(*args, **kwargs)

        setattr(client, name, in_turn)
    return client


# --- the server as a process ----------------------------------------------------------------------


class MeasuredAggregator(AggregatorProcess):
    """`python -m aggregator` in its own process, so its RSS is its own; `rss()` reads it now."""

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def open_files(self) -> int:
        return psutil.Process(self.pid).num_fds()


class RssSampler:
    """Samples a process's RSS every `interval_s` in a thread; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- idle WebSocket connections -------------------------------------------------------------------


@dataclass
class IdleSocket:
    """One connection, opened with a ticket of `leaf`, and every text frame it received (epoch time, text)."""

    leaf: LeafCredentials
    connection: ClientConnection
    received: list[tuple[float, str]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    closed_early: str | None = None


class IdleSockets:
    """WebSocket connections held open from one asyncio loop in a thread, each with a single-use ticket.

    A reader task per connection keeps reading, so the websockets library answers the server's pings and
    its receive queue never fills. Nothing is ever sent. `opened()` opens `len(leaves)` connections, at most
    `concurrency` handshakes at a time, and closes them all when the block ends.
    """

    def __init__(self, url: str, leaves: Sequence[LeafCredentials], *, concurrency: int = 50) -> None:
        self.url = url
        self.ws_url = url.replace("http://", "ws://", 1)
        self.leaves = list(leaves)
        self.concurrency = concurrency
        self.sockets: list[IdleSocket] = []
        self.ticket_statuses: Counter[int] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="idle-websockets", daemon=True)

    def _run(self, coroutine, timeout_s: float):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout_s)

    @contextmanager
    def opened(self, timeout_s: float = 120) -> Iterator[IdleSockets]:
        self._thread.start()
        try:
            self._run(self._open_all(), timeout_s)
            yield self
        finally:
            try:
                self._run(self._close_all(), 60)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
                self._loop.close()

    async def _open_all(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        # A new TCP connection per ticket, as the official client's consumer does: reusing a kept-alive one
        # races uvicorn closing it after 5 s idle (the POST then fails with a ReadError, through no fault
        # of the server's).
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:

            async def open_one(leaf: LeafCredentials) -> IdleSocket:
                async with gate:
                    response = await http.post(f"{self.url}/api/v1/ws/ticket", headers=auth_headers(leaf))
                    self.ticket_statuses[response.status_code] += 1
                    response.raise_for_status()
                    ticket = response.json()["data"]
                    connection = await connect(
                        f"{self.ws_url}/api/v1/ws?ticket={ticket['ticket_id']}&request_id={ticket['request_id']}",
                        ping_interval=None,  # as the official client: the server pings, the library answers
                        open_timeout=30,
                        close_timeout=5,
                    )
                    socket = IdleSocket(leaf, connection)
                    socket.reader = asyncio.create_task(self._read(socket))
                    return socket

            opened = await asyncio.gather(*(open_one(leaf) for leaf in self.leaves), return_exceptions=True)
        self.sockets = [socket for socket in opened if isinstance(socket, IdleSocket)]
        failures = [result for result in opened if isinstance(result, BaseException)]
        if failures:  # the ones that did open are closed by `opened()`
            raise RuntimeError(f"{len(failures)} of {len(self.leaves)} idle connections did not open") from failures[0]

    @staticmethod
    async def _read(socket: IdleSocket) -> None:
        try:
            async for message in socket.connection:
                socket.received.append((time.time(), str(message)))
        except Exception as exc:  # recorded, and asserted on by the test
            socket.closed_early = f"{type(exc).__name__}: {exc}"
            return
        socket.closed_early = f"closed by the server: {socket.connection.close_code} {socket.connection.close_reason}"

    async def _close_all(self) -> None:
        async def close(socket: IdleSocket) -> None:
            await socket.connection.close()
            if socket.reader is not None:
                await asyncio.wait([socket.reader], timeout=5)

        await asyncio.gather(*(close(socket) for socket in self.sockets), return_exceptions=True)

    def still_open(self) -> list[bool]:
        """Whether each connection is open and its reader still running."""
        return [
            s.connection.state is State.OPEN and s.reader is not None and not s.reader.done() for s in self.sockets
        ]

    def ping_all(self, timeout_s: float = 30) -> float:
        """Ping every connection and wait for every pong; returns the slowest round trip in seconds."""

        async def ping(socket: IdleSocket) -> float:
            started = time.monotonic()
            pong = await socket.connection.ping()
            await asyncio.wait_for(pong, timeout_s)
            return time.monotonic() - started

        async def ping_every() -> list[float]:
            return list(await asyncio.gather(*(ping(socket) for socket in self.sockets)))

        return max(self._run(ping_every(), timeout_s + 10))
