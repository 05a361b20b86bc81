"""Helpers for the servers a one-command run starts as child processes (Prefect's temporary server, the
embedded aggregator): a free loopback port, and an end tied to this process's end."""

from __future__ import annotations

import signal
import socket
import sys
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
