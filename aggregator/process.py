"""The aggregation server as a child process (`python -m aggregator`) on a free loopback port.

The coordinator's embedded default runs it so: in a thread of the coordinator it shared one interpreter lock
with five leaf flows and Prefect's engine (measured: 0.72 s a round in-process, 0.65 s in a process of its
own, 5 organisations). Tests use it to kill the server with SIGKILL and start it again on the same data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from fedgrove_common.child_process import ended_with_this_process, free_loopback_port, wait_until_healthy


def environment_without_fedgrove_settings() -> dict[str, str]:
    """This process's environment minus every `FEDGROVE_*` variable: a server that only its data folder and
    its arguments configure (tests and benchmarks)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("FEDGROVE_")}


class AggregatorStartError(RuntimeError):
    """The aggregator process exited or did not answer in time."""


class AggregatorProcess:
    """One data folder and one port; `start` may be called again after `kill` or `stop`. The process reads
    its settings from `env` (default: this process's environment), never from a `.env` file, and writes its
    log to `log`."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, log: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (log or self.data_dir.parent / f"aggregator-{self.port}.log").resolve()
        self.env = dict(os.environ if env is None else env)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def admin_token(self) -> str:
        """The token the server created in its data folder (unless FEDGROVE_ADMIN_TOKEN gave it one)."""
        return self.env.get("FEDGROVE_ADMIN_TOKEN") or (self.data_dir / "admin_token").read_text().strip()

    def start(self, timeout_s: float = 60) -> AggregatorProcess:
        """Launch the process and wait until it answers."""
        return self.launch().wait_until_ready(timeout_s)

    def launch(self) -> AggregatorProcess:
        """Start the process without waiting for it (`wait_until_ready` does)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "aggregator", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, env=self.env,
                preexec_fn=ended_with_this_process(),
                start_new_session=True,  # a terminal's Ctrl-C reaches the run, which stops this server after it
            )
        return self

    def wait_until_ready(self, timeout_s: float = 60) -> AggregatorProcess:
        """Wait until the launched process answers; kill it if it does not."""
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self._process is not None

        def check_process() -> None:
            assert self._process is not None
            if self._process.poll() is not None:
                raise AggregatorStartError(
                    f"the aggregator on {self.url} exited with code {self._process.returncode}; its log "
                    f"({self.log}) ends:\n{self._log_tail()}"
                )

        if not wait_until_healthy(lambda: f"{self.url}/health", timeout_s=timeout_s, interval_s=0.05,
                                  check_process=check_process):
            raise AggregatorStartError(
                f"the aggregator did not answer on {self.url} within {timeout_s:g} s; its log ({self.log}) "
                f"ends:\n{self._log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=10)

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM (uvicorn shuts down cleanly), SIGKILL after `timeout_s`."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
