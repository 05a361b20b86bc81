"""The aggregation server as a real process (`python -m aggregator`), to kill with SIGKILL and start again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AggregatorProcess:
    """One data folder and one port; `start` may be called again after `kill` or `stop`."""

    def __init__(self, data_dir: Path, *, port: int | None = None, log: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or data_dir.parent / f"aggregator-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {(self.data_dir / 'admin_token').read_text().strip()}"}

    def start(self, timeout_s: float = 30) -> AggregatorProcess:
        command = [sys.executable, "-m", "aggregator", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FEDGROVE_")}
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir.parent, env=environment
            )
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"aggregator exited with {self._process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"aggregator not healthy on {self.url} within {timeout_s} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def admin(self, method: str, path: str, **options: object) -> dict:
        response = httpx.request(method, f"{self.url}/admin/v1{path}", headers=self.admin_headers, timeout=30,
                                 **options)  # type: ignore[arg-type]
        response.raise_for_status()
        return response.json()
