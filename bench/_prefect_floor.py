"""Prefect's own floor for the demo's shape: what its engine costs with nothing else in the tasks.

    python bench/_prefect_floor.py ROUNDS ORGANISATIONS TASKS_PER_ROUND [--until-recorded]

Run by `bench/end_to_end.py` as a fresh process on a fresh PREFECT_HOME, set up as `fedgrove demo` sets up
Prefect (its temporary server started first, in-memory database, quiet task-run logs): a coordinator flow
runs one subflow per organisation in threads, each doing ROUNDS rounds of TASKS_PER_ROUND task runs that
return at once (the demo's leaf runs fit-local, upload-parameters, wait-for-aggregation and
reload-and-evaluate: `flows.leaf_training.TASK_RUNS_PER_ROUND`). Prints one JSON line: seconds to the first flow's body, the median
round (slowest organisation), the whole run, and the CPU the rounds cost this process (Prefect's client:
engine, events, logs) and the temporary server (recording them), per task run and per round, over the
organisations' subflows from start to end. CPU per round divided by the cores bounds from below the wall time
per round of those subflows (their whole run ÷ rounds), however the work is spread over threads or processes.
Empty task runs end faster than the server records them: it goes on after the last one (and the client may
still hold events it has not sent). With --until-recorded the run waits for that before it ends and reports
the server's CPU counting it, per task run, and how long after the runs it lasted; the whole run it reports
leaves out the wait for the server, as a user's run would.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

STARTED = time.perf_counter()

from fedgrove.prefect_ephemeral import start_before_prefect_settings, temporary_server_for  # noqa: E402

# As `fedgrove demo` does: started before Prefect's settings import, it boots while the rest imports.
PREFECT_SERVER = temporary_server_for("memory", started=start_before_prefect_settings())
if PREFECT_SERVER is not None and PREFECT_SERVER.process is None:
    PREFECT_SERVER.start()

import psutil  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

import logging  # noqa: E402


@task(cache_policy=NO_CACHE)
def empty_step(round_number: int) -> int:
    return round_number


@flow
def organisation(rounds: int, tasks_per_round: int) -> list[float]:
    seconds = []
    for round_number in range(rounds):
        started = time.perf_counter()
        for _ in range(tasks_per_round):
            empty_step(round_number)
        seconds.append(time.perf_counter() - started)
    return seconds


def server_cpu_seconds() -> float:
    """CPU seconds Prefect's temporary server process has used (0 when Prefect runs elsewhere)."""
    if PREFECT_SERVER is None or PREFECT_SERVER.process is None:
        return 0.0
    times = psutil.Process(PREFECT_SERVER.process.pid).cpu_times()
    return times.user + times.system


@flow
def coordinator(rounds: int, organisations: int, tasks_per_round: int, until_recorded: bool) -> dict[str, float]:
    first_flow_s = time.perf_counter() - STARTED
    client_cpu, server_cpu, leaves_started = time.process_time(), server_cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(organisations) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, organisation, rounds, tasks_per_round)
            for _ in range(organisations)
        ]
        per_organisation = [future.result() for future in futures]
    leaves_wall = time.perf_counter() - leaves_started
    client_cpu, server_cpu, server_before = time.process_time() - client_cpu, server_cpu_seconds() - server_cpu, server_cpu
    recorded = recording_finished(server_before) if until_recorded else None
    slowest = [max(times[r] for times in per_organisation) for r in range(rounds)]
    task_runs = rounds * organisations * tasks_per_round
    return {
        "first_flow_s": first_flow_s,
        "round_median_s": statistics.median(slowest),
        "leaves_wall_per_round_s": leaves_wall / rounds,
        "client_cpu_ms_per_task_run": 1000 * client_cpu / task_runs,
        "server_cpu_ms_per_task_run": 1000 * server_cpu / task_runs,
        "cpu_ms_per_round": 1000 * (client_cpu + server_cpu) / rounds,
        **({} if recorded is None else {
            "server_cpu_ms_per_task_run_recorded": 1000 * recorded[2] / task_runs,
            "recorded_after_s": recorded[0] + recorded[1],
            "recording_wait_s": recorded[1],
        }),
    }


def recording_finished(server_before: float, *, idle_cpu_s: float = 0.01, poll_s: float = 0.25,
                       limit_s: float = 30.0) -> tuple[float, float, float]:
    """Wait until the events of these task runs are sent and the server has recorded them (its CPU stops
    rising). Returns the seconds the client took to send what it still held (it would send it at exit
    anyway), the seconds the server went on after that, and the server's CPU since the runs began. Empty task
    runs end faster than the server records them, so part of their cost comes after them."""
    from prefect.events.worker import EventsWorker

    started = time.perf_counter()
    EventsWorker.instance().wait_until_empty()
    sent = time.perf_counter()
    last = server_cpu_seconds()
    while time.perf_counter() - sent < limit_s:
        time.sleep(poll_s)
        now = server_cpu_seconds()
        if now - last < idle_cpu_s:
            break  # idle since the poll before
        last = now
    return sent - started, max(0.0, time.perf_counter() - sent - poll_s), server_cpu_seconds() - server_before


if __name__ == "__main__":
    rounds, organisations, tasks_per_round = (int(value) for value in sys.argv[1:4])
    until_recorded = sys.argv[4:] == ["--until-recorded"]
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)  # as `fedgrove demo` does
    with PREFECT_SERVER.serving() if PREFECT_SERVER is not None else contextlib.nullcontext():
        figures = coordinator(rounds, organisations, tasks_per_round, until_recorded)
    # The whole run as a user's would be: without waiting for the server to finish recording.
    print(json.dumps({**figures, "whole_s": time.perf_counter() - STARTED - figures.get("recording_wait_s", 0.0)}))
