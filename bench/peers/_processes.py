"""Processes the peers benchmark starts: their memory sampled as `bench/end_to_end.py` samples the demo's, and
their whole families stopped at the end.

Why this module exists: every figure of the benchmark must be taken the same way for every framework. Peak
memory is the largest sum, over one sample, of the RSS of every process in the measured families (the roots
and all their descendants), sampled every 50 ms. Flower's deployment mode starts processes that outlive
their parents' knowledge (a ClientApp process per message, each in its own session), so every process ever
seen is remembered and stopped by its own id when the run ends, never by name.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.05
STOP_TIMEOUT_S = 15.0


@dataclass
class Family:
    """Root processes and every descendant seen while sampling; the peak of their summed RSS."""

    roots: list[psutil.Process] = field(default_factory=list)
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    cpu_seconds: dict[int, float] = field(default_factory=dict)  # each process's user + system CPU, last sample
    peak_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, process: subprocess.Popen[bytes]) -> psutil.Process:
        root = psutil.Process(process.pid)
        self.roots.append(root)
        self.seen[root.pid] = root
        return root

    def rss(self) -> int:
        """One sample: the summed RSS of the roots and all their descendants now (each process once)."""
        members: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                for member in (root, *root.children(recursive=True)):
                    members[member.pid] = member
            except psutil.Error:  # exited between the listing and now
                continue
        total = 0
        for pid, member in members.items():
            self.seen.setdefault(pid, member)
            try:
                total += member.memory_info().rss
                times = member.cpu_times()
                self.cpu_seconds[pid] = times.user + times.system
            except psutil.Error:
                pass
        return total

    @property
    def total_cpu_s(self) -> float:
        """CPU the family used, as last sampled (a process living under 50 ms may be missed)."""
        return sum(self.cpu_seconds.values())

    def start_sampling(self) -> None:
        def sample() -> None:
            while not self._stop.is_set():
                self.peak_bytes = max(self.peak_bytes, self.rss())
                self._stop.wait(SAMPLE_SECONDS)

        self._thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def stop_all(self) -> None:
        """SIGTERM to every process seen that still runs, SIGKILL to whatever is left after a while."""
        self.stop_sampling()
        alive = []
        for process in [*self.seen.values()]:
            try:
                for child in process.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            except psutil.Error:
                pass
        for process in self.seen.values():
            try:
                if process.is_running():  # compares the start time too: never a recycled pid
                    process.terminate()
                    alive.append(process)
            except psutil.Error:
                pass
        _gone, left = psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        for process in left:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=STOP_TIMEOUT_S)


def start(command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A process writing stdout and stderr to `log`, with no standard input."""
    with open(log, "ab") as sink:
        return subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


@dataclass(frozen=True)
class Timed:
    wall_s: float
    peak_mb: float
    returncode: int | None  # None: stopped at the time limit
    cpu_s: float
    processes: int


def run_sampled(command: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path,
                timeout_s: float) -> Timed:
    """Run one command to its end (or the time limit) while sampling its process tree's memory."""
    family = Family()
    started = time.perf_counter()
    process = start(command, env=env, cwd=cwd, log=log)
    family.add(process)
    family.start_sampling()
    try:
        returncode: int | None = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        returncode = None
    wall = time.perf_counter() - started
    family.stop_all()
    return Timed(wall_s=wall, peak_mb=family.peak_bytes / 2**20, returncode=returncode, cpu_s=family.total_cpu_s,
                 processes=len(family.seen))


def tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def load_average() -> tuple[float, float, float]:
    """The machine's 1/5/15-minute load: other work on this machine shows in every figure."""
    return os.getloadavg()
