"""Helpers for the servers a one-command run starts as child processes (Prefect's temporary server, the
embedded aggregator): a free loopback port, an end tied to this process's end, the wait for a health URL."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ended_with_this_process() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that has the kernel send the child SIGTERM when this process dies, so a
    killed run leaves no server behind (atexit handlers do not run on SIGKILL); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child must not load libraries
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until_healthy(
    health_url: Callable[[], str], *, timeout_s: float, interval_s: float, check_process: Callable[[], None]
) -> bool:
    """GET the health URL until it answers 200 (True) or `timeout_s` passes (False). `check_process` runs
    before each try: it raises when the child died, and may restart it (hence the URL as a callable)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as http:  # one client: each new one builds an SSL context (~35 ms of CPU here)
        while time.monotonic() < deadline:
            check_process()
            try:
                if http.get(health_url()).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(interval_s)
    return False
