"""Ctrl-C in a terminal running `fedgrove demo` ends it, and its servers with it.

A terminal sends SIGINT to the whole foreground process group. The demo's two servers (Prefect's temporary
server and the aggregator) were in that group, died at once, and the demo then spent about an hour at exit
trying to send Prefect's queued events to the dead server. They now run in sessions of their own: the
demo gets the interrupt, sends what Prefect holds, then stops them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

RUNNING_MARK = "preprocessing agreed in"  # a leaf's line once the leaves talk through the aggregator


def _wait_for(log: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"'{text}' not in the demo's output within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _as_in_a_terminal() -> None:
    """SIGINT handled by default, as in a terminal: a suite started in the background (`.ci/run &`) inherits
    it ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_the_demo_and_its_servers(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("FEDGROVE_", "BRANCHKEY_")) and key != "PREFECT_API_URL"}
    with open(log, "w") as output:
        demo = subprocess.Popen(
            [sys.executable, "-m", "fedgrove_cli", "demo", "--sites", "2", "--rounds", "50",
             "--out", str(tmp_path / "runs")],
            stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path, env=environment, start_new_session=True,
            preexec_fn=_as_in_a_terminal,
        )
    try:
        _wait_for(log, RUNNING_MARK, timeout_s=180)
        servers = psutil.Process(demo.pid).children(recursive=True)
        assert len(servers) == 2, [server.cmdline() for server in servers]

        os.killpg(demo.pid, signal.SIGINT)  # what a terminal does on Ctrl-C

        assert demo.wait(timeout=90) == 130
        gone, alive = psutil.wait_procs(servers, timeout=10)
        assert alive == []
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
