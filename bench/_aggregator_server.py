"""The aggregation server as a separate process on a loopback port, its peak RSS, and the admin calls.

Not `aggregator.process.AggregatorProcess`: run as a script, this folder's `aggregator.py` shadows the
`aggregator` package, so the benchmark imports none of it (only the installed `fedgrove` helpers).

The server runs as `python -m aggregator` in its own process (fresh data folder, working directory in
the temp folder so no `.env` is read, every `FEDGROVE_*` variable removed), so its memory is measured on
its own and not mixed with the clients'. `stop()` always ends it: SIGTERM, then SIGKILL after 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from fedgrove_common.child_process import free_loopback_port, wait_until_healthy

LOOPBACK = "127.0.0.1"
MB = 1_000_000  # decimal megabytes everywhere in this benchmark



class ServerProcess:
    def __init__(self, data_dir: Path, *, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_loopback_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_token = ""
        self._log = None

    def start(self, timeout_s: float = 60) -> ServerProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FEDGROVE_")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "aggregator", "--host", LOOPBACK, "--port", str(self.port),
                   "--data-dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            command, cwd=self.data_dir.parent, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        process = self.process

        def check_process() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"aggregator exited with {process.returncode}: {self.log_tail()}")

        if not wait_until_healthy(lambda: f"{self.url}/health", timeout_s=timeout_s, interval_s=0.05,
                                  check_process=check_process):
            raise RuntimeError(f"aggregator did not answer /health within {timeout_s} s: {self.log_tail()}")
        self.admin_token = (self.data_dir / "admin_token").read_text().strip()
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- the admin API ---------------------------------------------------------------------------

    def _admin(self, method: str, path: str, **kwargs: object) -> dict:
        response = httpx.request(method, f"{self.url}{path}", timeout=60,
                                 headers={"Authorization": f"Bearer {self.admin_token}"}, **kwargs)  # type: ignore[arg-type]
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path} failed with {response.status_code}: {response.text[:300]}")
        return response.json()

    def create_branch(self, *, tree: str, branch: str, leaves: int, target: int) -> dict:
        return self._admin("POST", "/admin/v1/branches",
                           json={"tree": tree, "branch": branch, "leaves": leaves, "target": target})

    def branch_status(self, branch_id: str) -> dict:
        return self._admin("GET", f"/admin/v1/branches/{branch_id}")

    def wait_connected(self, branch_id: str, expected: int, timeout_s: float = 120) -> float:
        """Poll `leaves_connected` until `expected` leaves have their WebSocket up; returns the seconds taken."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            connected = len(self.branch_status(branch_id)["leaves_connected"])
            if connected >= expected:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {connected}/{expected} leaves connected within {timeout_s} s")
            time.sleep(0.05)


class PeakRss:
    """Samples a process's RSS every `interval_s` in a thread, and reads the kernel's high-water mark.

    `reset()` clears both (the kernel's VmHWM through /proc/PID/clear_refs, where allowed), so a peak
    belongs to one window. The peak reported is the larger of the two; both are kept.
    """

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self._process = psutil.Process(pid)
        self._pid = pid
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self.sampled_peak = 0
        self.baseline = 0
        self.hwm_reset = False

    def _rss(self) -> int:
        try:
            return self._process.memory_info().rss
        except psutil.Error:
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sampled_peak = max(self.sampled_peak, self._rss())

    def reset(self) -> None:
        try:
            Path(f"/proc/{self._pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.baseline = self.sampled_peak = self._rss()

    def kernel_hwm(self) -> int | None:
        """VmHWM in bytes, if this kernel has it and it was reset for this window."""
        if not self.hwm_reset:
            return None
        try:
            for line in Path(f"/proc/{self._pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def __enter__(self) -> PeakRss:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sampled_peak = max(self.sampled_peak, self._rss())

    @property
    def peak(self) -> int:
        return max(self.sampled_peak, self.kernel_hwm() or 0)


class ForeignCpu:
    """CPU seconds of the benchmark process and of the server over a window, and the share of the machine
    that other processes used meanwhile.

    On a shared 2-core machine another job's tests change every figure here; this measures by how much,
    so a noisy run shows as one. Busy time is user + nice + system + irq + softirq + steal.
    """

    def __init__(self, server_pid: int) -> None:
        self._bench = psutil.Process()
        self._server = psutil.Process(server_pid)
        self._start = (0.0, 0.0, 0.0, 0.0)
        self.share = 0.0
        self.bench_cpu_s = 0.0
        self.server_cpu_s = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _cpu(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    def __enter__(self) -> ForeignCpu:
        self._start = (time.monotonic(), self._busy(), self._cpu(self._bench), self._cpu(self._server))
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.monotonic() - self._start[0]
        self.bench_cpu_s = self._cpu(self._bench) - self._start[2]
        self.server_cpu_s = self._cpu(self._server) - self._start[3]
        foreign = (self._busy() - self._start[1]) - self.bench_cpu_s - self.server_cpu_s
        self.share = max(0.0, foreign) / max(wall * (os.cpu_count() or 1), 1e-9)
