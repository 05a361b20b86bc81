"""Flower's two modes on the exported task, measured: simulation (one process, Ray) and deployment (a SuperLink,
one SuperNode per site, `flwr run`), every process on 127.0.0.1.

Why this module exists: `bench/peers/run.py` needs, for each mode, the same figures it takes of fedgrove:
the whole run's wall time from the first process's start, the steady time per round (median of the rounds
after the first; the ServerApp marks the round boundaries), the peak memory of all the mode's processes, and
the final pooled test accuracy the ServerApp measured.

Deployment mode, as Flower 1.41 ships it: the SuperLink serves its Fleet, Control and runtime APIs on one HTTP
port (`--host 127.0.0.1 --port P`; runtime installation of app dependencies with `uv sync` is turned off, the
venv already holds them); each SuperNode pulls messages from it and, for every message, starts a fresh
`flwr-clientapp` process that installs the app bundle, imports the ClientApp (and torch) and answers that one
message. `flwr run` packs bench/peers/flower_app, submits it to the SuperLink named in a Flower config written
to this run's own FLWR_HOME (loopback only, not Flower's default config with its hosted SuperGrid), and
streams the run's log until it ends.
"""

from __future__ import annotations

import json
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _flower_venv import executable, flower_environment, python
from _processes import Family, run_sampled, start, tail

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "flower_app"
SIMULATION_SCRIPT = HERE / "flower_simulation.py"
SUPERLINK_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FlowerFigures:
    mode: str
    wall_s: float  # from the first process's start to the run's end
    first_round_s: float | None
    per_round_s: float | None  # median of the rounds after the first
    rounds_done: int
    peak_mb: float
    accuracy_test: float | None  # None: the run did not finish
    parameters: list[list[float]] | None
    note: str = ""
    cpu_s: float | None = None  # all its processes
    processes: int | None = None  # processes seen, all told
    submit_to_end_s: float | None = None  # deployment: `flwr run` to the run's end

    def as_dict(self) -> dict:
        return asdict(self)


def round_figures(result_file: Path) -> tuple[float | None, float | None, int, dict]:
    """First round, median of the later rounds, rounds done, and the ServerApp's whole result."""
    try:
        result = json.loads(result_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None, None, 0, {}
    marks = result.get("round_marks", [])
    rounds = [later - earlier for earlier, later in zip(marks, marks[1:])]
    first = rounds[0] if rounds else None
    steady = statistics.median(rounds[1:]) if len(rounds) > 1 else None
    return first, steady, len(rounds), result


def simulation(task_dir: Path, scratch: Path, *, cpus_per_client: float, timeout_s: float) -> FlowerFigures:
    """`run_simulation` with the Ray backend in a fresh process, one virtual SuperNode per site."""
    folder = scratch / "flower-simulation"
    folder.mkdir(parents=True, exist_ok=True)
    result_file, log = folder / "result.json", folder / "flower-simulation.log"
    command = [str(python()), str(SIMULATION_SCRIPT), str(task_dir), str(result_file),
               "--cpus-per-client", str(cpus_per_client), "--ray-temp-dir", str(folder / "ray")]
    timed = run_sampled(command, env=flower_environment(folder / "flwr-home"), cwd=folder, log=log,
                        timeout_s=timeout_s)
    first, steady, done, result = round_figures(result_file)
    note = ""
    if timed.returncode != 0:
        note = (f"stopped at the {timeout_s:.0f} s limit" if timed.returncode is None
                else f"exited {timed.returncode}: {tail(log, 15)}")
    return FlowerFigures(mode="simulation", wall_s=timed.wall_s, first_round_s=first, per_round_s=steady,
                         rounds_done=done, peak_mb=timed.peak_mb, accuracy_test=result.get("pooled_accuracy_test"),
                         parameters=result.get("parameters"), note=note, cpu_s=timed.cpu_s,
                         processes=timed.processes)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, family: Family, log: Path) -> None:
    deadline = time.monotonic() + SUPERLINK_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(not root.is_running() for root in family.roots):
            raise RuntimeError(f"the SuperLink exited before it listened:\n{tail(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the SuperLink did not listen on 127.0.0.1:{port} in {SUPERLINK_READY_TIMEOUT_S} s:\n"
                       f"{tail(log)}")


def write_flower_config(home: Path, port: int) -> None:
    """The only SuperLink connection `flwr run` knows in this FLWR_HOME: ours, on loopback, without TLS."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')


def deployment(task_dir: Path, scratch: Path, *, sites: int, rounds: int, timeout_s: float) -> FlowerFigures:
    """A SuperLink, one SuperNode per site and `flwr run` of the task's first `rounds` rounds, all measured as one
    family of processes."""
    folder = scratch / "flower-deployment"
    folder.mkdir(parents=True, exist_ok=True)
    home, result_file = folder / "flwr-home", folder / "result.json"
    port = free_port()
    write_flower_config(home, port)
    env = flower_environment(home)
    family = Family()
    started = time.perf_counter()
    try:
        superlink_log = folder / "superlink.log"
        family.add(start([str(executable("flower-superlink")), "--insecure", "--host", "127.0.0.1", "--port",
                          str(port), "--disable-runtime-dependency-installation"],
                         env=env, cwd=folder, log=superlink_log))
        family.start_sampling()
        _wait_for_port(port, family, superlink_log)
        for index in range(sites):
            family.add(start([str(executable("flower-supernode")), "--insecure", "--superlink", f"127.0.0.1:{port}",
                              "--host", "127.0.0.1", "--port", str(free_port()),
                              "--node-config", f"partition-id={index} num-partitions={sites}"],
                             env=env, cwd=folder, log=folder / f"supernode-{index}.log"))
        submitted = time.perf_counter()
        run_log = folder / "flwr-run.log"
        runner = start([str(executable("flwr")), "run", str(APP_DIR), "bench", "--stream", "--run-config",
                        f"task-dir='{task_dir}' result-file='{result_file}' num-rounds={rounds}"], env=env, cwd=folder, log=run_log)
        family.add(runner)
        try:
            returncode: int | None = runner.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # the limit: the rounds done so far are still reported
            returncode = None
        ended = time.perf_counter()
    finally:
        family.stop_all()
    first, steady, done, result = round_figures(result_file)
    accuracy = result.get("pooled_accuracy_test")
    note = ""
    if returncode is None:
        note = f"stopped at the {timeout_s:.0f} s limit after {done} rounds"
    elif returncode != 0 or accuracy is None:
        note = f"flwr run exited {returncode}: {tail(run_log, 15)}"
    return FlowerFigures(mode="deployment", wall_s=ended - started, first_round_s=first, per_round_s=steady,
                         rounds_done=done, peak_mb=family.peak_bytes / 2**20, accuracy_test=accuracy,
                         parameters=result.get("parameters"), note=note, cpu_s=family.total_cpu_s,
                         processes=len(family.seen), submit_to_end_s=ended - submitted)


def clientapp_start_cost() -> dict[str, float]:
    """What starting one ClientApp process costs before it sees a message: Python with flwr's ClientApp API and
    torch imported (a deployment round starts one such process per site for training and one for evaluation)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([str(python()), "-c", "import flwr.app, flwr.clientapp, torch"], check=True, timeout=300,
                   env=flower_environment(Path(tempfile.gettempdir()) / "peers-flwr-home"))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}
