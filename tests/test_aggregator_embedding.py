"""The embedded aggregator (`ServerThread`) lives inside another program (the coordinator flow, the tests):
starting and stopping it must leave that program's logging alone."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from aggregator.config import AggregatorSettings
from aggregator.server import ServerThread


class RecordingHandler(logging.Handler):
    """Records what the process's logging does to it: flushes, closes, and the records it receives."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.flushes = 0
        self.closed = False
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True
        super().close()


def test_starting_the_embedded_aggregator_leaves_the_host_programs_log_handlers_open(tmp_path: Path):
    """uvicorn's default logging setup (`dictConfig`) shuts down every handler of the process: Prefect's
    API log handler blocked ~5 s draining at each coordinator start, and every handler ended up closed."""
    host_logger = logging.getLogger("fedgrove-test-host-program")
    host_logger.setLevel(logging.INFO)
    handler = RecordingHandler()
    host_logger.addHandler(handler)
    try:
        settings = AggregatorSettings(data_dir=tmp_path / "aggregator", port=0, _env_file=None)
        with ServerThread(settings) as server:
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
            host_logger.info("still logging while the aggregator runs")
        assert (handler.closed, handler.flushes) == (False, 0)
        assert handler.messages == ["still logging while the aggregator runs"]
    finally:
        host_logger.removeHandler(handler)


def test_the_aggregator_child_process_ends_when_the_process_that_started_it_is_killed(tmp_path: Path):
    """The coordinator runs its embedded aggregator as a child process; SIGKILL of the coordinator (no atexit,
    no finally) must not leave the server running on its port."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from aggregator.process import AggregatorProcess\n"
        f"server = AggregatorProcess(Path({str(tmp_path / 'data')!r})).start()\n"
        "print(server.pid, server.url, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid, url = parent.stdout.readline().split()
        child = psutil.Process(int(pid))
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        parent.kill()
        parent.wait(timeout=10)
        child.wait(timeout=15)  # raises psutil.TimeoutExpired while the server outlives its parent
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()
