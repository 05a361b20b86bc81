"""A real Prefect server for the session (`prefect server start`), and the Prefect workers the tests start.

Loaded as a pytest plugin (`pytest_plugins = [..., "tests.prefect_server"]` in conftest.py).

* `prefect_server` (session): `prefect server start` on a free loopback port, with a temporary PREFECT_HOME,
  a SQLite file, analytics off and the UI on; yielded once `/api/health` answers. At the end it stops every
  worker started through it (and the flow-run processes they spawned), then the server.
* `prefect_deployed` (session): the work pools, then `prefect deploy --all --prefect-file
  deployments/prefect.yaml` from the repository root: the README's commands, run as a user runs them.
* `coordinator_worker` (session): a process worker on `fedgrove-coordinator`; its flow runs write their
  scratch and outputs under a temporary folder, never into the checkout.
* `weekly_run` (session): one manual run of `federated-training/weekly` (the demo: 2 sites, 2 rounds) that
  completed, shared by the deployment tests and the UI test.

The test process's own Prefect settings are never touched (other tests use `prefect_test_harness`): this
module talks to the server's REST API with httpx and drives the Prefect CLI in subprocesses whose
environment it builds from scratch, without the developer's PREFECT_*, FEDGROVE_* or leaf credentials.

Its length (~400 lines) is the life cycle of a server and its workers, whose start and clean-up belong
together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.aggregator_process import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"
COORDINATOR_POOL = "fedgrove-coordinator"
SITES = tuple(f"site-{i}" for i in range(1, 6))
WEEKLY = "federated-training/weekly"
WEEKLY_PARAMETERS = {"run": {"run_id": "weekly-e2e", "demo": {"sites": 2, "rounds": 2}}}
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

SERVER_START_TIMEOUT_S = 120.0  # ~6 s here, ~15 s on a new database; CI machines are slower
WORKER_START_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
API_TIMEOUT_S = 60.0
API_ATTEMPTS = 3

_STRIPPED_PREFIXES = ("PREFECT_", "FEDGROVE_", "BRANCHKEY_", "LEAF_", "AA_")
_STRIPPED_NAMES = {"TREE_ID", "BRANCH_ID", "OWNER_ID"}


def site_pool(site: str) -> str:
    return f"fedgrove-{site}"


def clean_environment() -> dict[str, str]:
    """This process's environment without Prefect settings, fedgrove settings or leaf credentials."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_STRIPPED_PREFIXES) and key not in _STRIPPED_NAMES
    }


def prefect_executable() -> str:
    found = shutil.which("prefect", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(f"expected the `prefect` script beside {sys.executable} (fix: pip install -e '.[test]')")
    return found


@dataclass
class ManagedProcess:
    """A process a test started, its log file, and how to stop it with everything it spawned."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.process.poll() is None

    def family(self) -> list[psutil.Process]:
        """The process and its descendants (flow runs start in sessions of their own: not one process group)."""
        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        stop_processes([self], timeout_s=timeout_s)


def stop_processes(processes: list[ManagedProcess], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to each process and its descendants at once, SIGKILL to whatever is left after `timeout_s`."""
    family = [member for managed in processes if managed.running() for member in managed.family()]
    for member in family:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(family, timeout=timeout_s)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    for managed in processes:
        managed.process.wait(timeout=timeout_s)


class PrefectServer:
    """`prefect server start` with its own PREFECT_HOME under `root`; CLI calls and workers use another."""

    def __init__(self, root: Path, *, server_env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.server_env = dict(server_env or {})  # the server process's own settings (its database, services)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        self.server_home = root / "server-home"
        self.client_home = root / "client-home"
        self.scratch = root / "tmp"
        self.logs = root / "logs"
        for folder in (self.server_home, self.client_home, self.scratch, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self._server: ManagedProcess | None = None
        self._workers: list[ManagedProcess] = []
        self._http = httpx.Client(base_url=self.api_url, timeout=API_TIMEOUT_S)

    # --- the server ---------------------------------------------------------------------------------
    def _server_environment(self) -> dict[str, str]:
        return {
            **clean_environment(),
            "PREFECT_HOME": str(self.server_home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.server_home / 'prefect.db'}",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_UI_ENABLED": "true",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
            "PYTHONUNBUFFERED": "1",
            **self.server_env,
        }

    def start(self) -> PrefectServer:
        log = self.logs / "prefect-server.log"
        command = [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(log, "wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=self._server_environment(),
            )
        self._server = ManagedProcess("prefect-server", process, log)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self._server.running():
                raise RuntimeError(f"prefect server exited with {process.returncode}:\n{self._server.tail()}")
            try:
                if self._http.get("/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(
            f"prefect server did not answer {self.api_url}/health within {SERVER_START_TIMEOUT_S} s:\n"
            f"{self._server.tail()}"
        )

    def stop(self) -> None:
        stop_processes(self._workers)
        self._workers.clear()
        if self._server is not None:
            self._server.stop()
        self._http.close()

    # --- clients: REST API and CLI ------------------------------------------------------------------
    def client_environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """For a Prefect CLI call or a worker (and, through the worker, its flow runs)."""
        return {
            **clean_environment(),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(self.client_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_COLORS": "false",
            "PREFECT_CLI_WRAP_LINES": "false",
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(self.scratch),
            **(extra or {}),
        }

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the REST API. Every call made here only reads (GET, or POST .../filter), so a call that
        times out on a loaded machine (SQLite, two cores, workers busy) is repeated."""
        for attempt in range(1, API_ATTEMPTS + 1):
            try:
                response = self._http.request(method, path, json=body)
                break
            except httpx.TransportError:
                if attempt == API_ATTEMPTS:
                    raise
                time.sleep(attempt)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} answered {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def prefect(
        self, *arguments: str, extra_env: Mapping[str, str] | None = None, timeout_s: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run the Prefect CLI from the repository root (where `prefect deploy` resolves the entrypoints)."""
        return subprocess.run(
            [prefect_executable(), *arguments], cwd=REPO_ROOT, env=self.client_environment(extra_env),
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        )

    # --- workers ------------------------------------------------------------------------------------
    def start_worker(self, pool: str, *, extra_env: Mapping[str, str] | None = None) -> ManagedProcess:
        """`prefect worker start --pool POOL`, stopped with the server; returns once the pool sees it."""
        [worker] = self.start_workers({pool: extra_env or {}})
        return worker

    def start_workers(self, pools: Mapping[str, Mapping[str, str]]) -> list[ManagedProcess]:
        """One worker per pool (with that pool's extra environment), started at once; returns when every pool
        has seen its worker."""
        started = []
        for pool, extra_env in pools.items():
            name = f"{pool}-{uuid.uuid4().hex[:6]}"
            log = self.logs / f"worker-{name}.log"
            command = [prefect_executable(), "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
            with open(log, "wb") as sink:
                process = subprocess.Popen(
                    command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.scratch, env=self.client_environment(extra_env),
                )
            worker = ManagedProcess(name, process, log)
            self._workers.append(worker)
            started.append((pool, worker))
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        waiting = list(started)
        while waiting:
            for pool, worker in list(waiting):
                if not worker.running():
                    raise RuntimeError(f"worker {worker.name} exited with {worker.process.returncode}:\n"
                                       f"{worker.tail()}")
                names = {entry["name"] for entry in self.api("POST", f"/work_pools/{pool}/workers/filter", {})}
                if worker.name in names:
                    waiting.remove((pool, worker))
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(
                    f"workers {[worker.name for _, worker in waiting]} did not register within "
                    f"{WORKER_START_TIMEOUT_S} s:\n" + "\n".join(worker.tail() for _, worker in waiting)
                )
            if waiting:
                time.sleep(0.5)
        return [worker for _, worker in started]

    def stop_workers(self, workers: list[ManagedProcess]) -> None:
        stop_processes(workers)
        self._workers = [worker for worker in self._workers if worker not in workers]

    def worker_logs(self) -> str:
        return "\n".join(f"--- {worker.name} ---\n{worker.tail()}" for worker in self._workers)

    # --- deployments and flow runs ------------------------------------------------------------------
    def deployment(self, name: str) -> dict:
        return self.api("GET", f"/deployments/name/{name}")

    def flow_runs(self, **flow_run_filter: Any) -> list[dict]:
        return self.api("POST", "/flow_runs/filter", {"flow_runs": flow_run_filter, "sort": "START_TIME_ASC"})

    def flow_run_logs(self, flow_run_id: str) -> str:
        logs = self.api("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        return "\n".join(f"{entry['timestamp']} {entry['name']}: {entry['message']}" for entry in logs)

    def wait_for_log(self, flow_run_id: str, text: str, *, timeout_s: float = 60) -> str:
        """The flow run's logs once `text` is among them: a process ships its logs in batches, so a run's last
        lines can reach the server after its final state."""
        deadline = time.monotonic() + timeout_s
        while True:
            logs = self.flow_run_logs(flow_run_id)
            if text in logs or time.monotonic() > deadline:
                return logs
            time.sleep(0.5)

    def run_deployment(self, name: str, *, parameters: Mapping[str, Any]) -> str:
        """`prefect deployment run NAME --params JSON`; returns the new flow run's id."""
        run_name = f"test-{uuid.uuid4().hex[:10]}"
        completed = self.prefect(
            "deployment", "run", name, "--params", json.dumps(dict(parameters)), "--flow-run-name", run_name
        )
        assert completed.returncode == 0, f"prefect deployment run failed:\n{completed.stdout}\n{completed.stderr}"
        runs = self.flow_runs(name={"any_": [run_name]})
        assert len(runs) == 1, f"expected one flow run named {run_name}, got {len(runs)}:\n{completed.stdout}"
        return runs[0]["id"]

    def wait_for_flow_run(self, flow_run_id: str, *, timeout_s: float) -> dict:
        """Poll until the run is in a terminal state; fail with its logs and the workers' if it is not on time."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.api("GET", f"/flow_runs/{flow_run_id}")
            if run["state_type"] in TERMINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"flow run {run['name']} still {run['state_type']} after {timeout_s} s\n"
                    f"{self.flow_run_logs(flow_run_id)}\n{self.worker_logs()}"
                )
            time.sleep(1)

    def explain(self, run: dict) -> str:
        """A failure message: the run's state, its logs and the workers' logs."""
        return (f"flow run {run['name']} ended {run['state_type']} ({run['state_name']})\n"
                f"{self.flow_run_logs(run['id'])}\n{self.worker_logs()}")


@dataclass(frozen=True)
class CoordinatorWorker:
    worker: ManagedProcess
    work_dir: Path
    artifacts: Path


@dataclass(frozen=True)
class WeeklyRun:
    flow_run: dict
    artifacts: Path


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_deployed(prefect_server: PrefectServer) -> subprocess.CompletedProcess[str]:
    """Every work pool, then every deployment of `deployments/prefect.yaml`; returns `prefect deploy`'s result."""
    pools = [COORDINATOR_POOL, *(site_pool(site) for site in SITES)]
    creating = [
        subprocess.Popen(
            [prefect_executable(), "work-pool", "create", pool, "--type", "process"],
            cwd=REPO_ROOT, env=prefect_server.client_environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for pool in pools
    ]
    for pool, process in zip(pools, creating, strict=True):
        output, _ = process.communicate(timeout=CLI_TIMEOUT_S)
        assert process.returncode == 0, f"prefect work-pool create {pool} failed:\n{output}"
    deployed = prefect_server.prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
    assert deployed.returncode == 0, f"prefect deploy failed:\n{deployed.stdout}\n{deployed.stderr}"
    return deployed


@pytest.fixture(scope="session")
def coordinator_worker(
    prefect_server: PrefectServer, prefect_deployed: subprocess.CompletedProcess[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> CoordinatorWorker:
    root = tmp_path_factory.mktemp("coordinator")
    work_dir, artifacts = root / "work", root / "runs"
    worker = prefect_server.start_worker(
        COORDINATOR_POOL, extra_env={"FEDGROVE_WORK_DIR": str(work_dir), "FEDGROVE_ARTIFACTS": str(artifacts)}
    )
    return CoordinatorWorker(worker=worker, work_dir=work_dir, artifacts=artifacts)


@pytest.fixture(scope="session")
def weekly_run(prefect_server: PrefectServer, coordinator_worker: CoordinatorWorker) -> WeeklyRun:
    flow_run_id = prefect_server.run_deployment(WEEKLY, parameters=WEEKLY_PARAMETERS)
    run = prefect_server.wait_for_flow_run(flow_run_id, timeout_s=300)
    assert run["state_type"] == "COMPLETED", prefect_server.explain(run)
    return WeeklyRun(flow_run=run, artifacts=coordinator_worker.artifacts)
