"""Flower beside fedgrove on the demo's task, measured in one invocation: the peers benchmark of issue #21.

    .venv/bin/python bench/peers/run.py [--rounds 50] [--sites 5] [--skip deployment] ...

Runs in the project's venv. It creates (or reuses) Flower's own venv `bench/peers/.venv-flower` (never the
project's), exports the demo's task with fedgrove (`export_task.py`: the split, each site's held-out records,
the federated preprocessing, seeds, initial parameters and the in-memory reference), then runs one after the
other: Flower's simulation mode (Ray), `fedgrove demo` (as `bench/end_to_end.py` runs it) with its two floors
(the in-memory FedAvg loop and Prefect's own, `bench/end_to_end.py`'s code) and Flower's
deployment mode (a SuperLink and a SuperNode per site on 127.0.0.1, `flwr run`; the task's first 10 rounds by
default, `--deployment-rounds 50` for all: its rounds cost tens of seconds each here). For each: the whole run's wall
time from its first process's start, the steady per-round time (median of the rounds after the first), the
peak RSS of all its processes (sampled every 50 ms) and its final pooled test accuracy. Every accuracy must
equal the in-memory reference's after as many rounds, which proves the runs trained the same task; a difference fails the run
(exit 1) after the figures are written. Prints and writes bench/results/peers.{json,md}, with the ratios
fedgrove / Flower and the issue's targets as PASS or MISS, and bench/results/README-table.md, the short table
for the README.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
from _fedgrove_runs import demo, inmemory_floor, prefect_floor  # noqa: E402
from _fedgrove_sites import sites_mode  # noqa: E402
from _flower_runs import clientapp_start_cost, deployment, simulation  # noqa: E402
from _flower_venv import ensure_flower_venv, versions  # noqa: E402
from _processes import load_average  # noqa: E402
from export_task import export  # noqa: E402

from fedgrove.demo import DemoOptions  # noqa: E402

MODES = ("simulation", "demo", "deployment", "sites")
DEPLOYMENT_ROUNDS = 10
PAIRS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=DemoOptions().rounds)
    parser.add_argument("--sites", type=int, default=DemoOptions().sites)
    parser.add_argument("--skip", action="append", choices=MODES, default=[], help="leave a run out (repeatable)")
    parser.add_argument("--flower-cpus-per-client", type=float, default=2.0,
                        help="Ray CPUs per virtual client in simulation mode (default: Flower's own, 2)")
    parser.add_argument("--simulation-timeout", type=float, default=900.0)
    parser.add_argument("--pairs", type=int, default=PAIRS,
                        help="run Flower's simulation, the demo and Prefect's floor in turn this many times each; "
                             "each row shows its median run, and the overhead target is the median of the "
                             "differences pair by pair (default %(default)s)")
    parser.add_argument("--deployment-rounds", type=int, default=DEPLOYMENT_ROUNDS,
                        help="Flower's deployment mode runs the task's first N rounds (default %(default)s: a round "
                             "costs tens of seconds there; its accuracy is checked against the reference after N)")
    parser.add_argument("--deployment-timeout", type=float, default=2400.0,
                        help="stop Flower's deployment run after this many seconds and report the rounds done")
    arguments = parser.parse_args()
    # SIGTERM (a time limit, `kill PID`) unwinds like Ctrl-C, so every `finally` stops the processes it started
    # (the SuperLink, the SuperNodes and their ClientApps) and the scratch folder is removed.
    signal.signal(signal.SIGTERM, lambda number, _frame: sys.exit(128 + number))

    started = time.perf_counter()
    ensure_flower_venv()
    venv_s = time.perf_counter() - started
    load_before = load_average()
    runs: dict[str, dict] = {}
    # Short scratch path: Ray's and Flower's Unix sockets live under it.
    with tempfile.TemporaryDirectory(prefix="peers-", dir="/tmp") as folder, contextlib.ExitStack() as later_pairs:
        scratch = Path(folder)
        task_dir = scratch / "task"
        task = export(task_dir, DemoOptions(sites=arguments.sites, rounds=arguments.rounds))
        reference = task["reference"]["pooled_accuracy_test"]
        # The runs the first two targets compare take turns, `--pairs` times: this machine's speed drifts between
        # runs by more than the differences between them. Each row keeps its median run; the overhead target is
        # the median of the demo's and Prefect's floor's differences pair by pair.
        tries: dict[str, list[dict]] = {"flower_simulation": [], "fedgrove_demo": [], "prefect_floor": []}
        for pair in range(1, arguments.pairs + 1):
            # A folder of its own per pair, its path as short as the first's (Ray's sockets: at most 107 bytes).
            pair_scratch = scratch if pair == 1 else Path(later_pairs.enter_context(
                tempfile.TemporaryDirectory(prefix="peers-", dir="/tmp")))
            if "simulation" not in arguments.skip:
                print(f"Flower simulation ({pair}/{arguments.pairs}) ...", flush=True)
                tries["flower_simulation"].append(simulation(
                    task_dir, pair_scratch, cpus_per_client=arguments.flower_cpus_per_client,
                    timeout_s=arguments.simulation_timeout).as_dict())
            if "demo" not in arguments.skip:
                print(f"fedgrove demo ({pair}/{arguments.pairs}) ...", flush=True)
                tries["fedgrove_demo"].append(demo(pair_scratch, rounds=arguments.rounds,
                                                   sites=arguments.sites).as_dict())
                print(f"Prefect's floor ({pair}/{arguments.pairs}) ...", flush=True)
                tries["prefect_floor"].append(prefect_floor(pair_scratch, rounds=arguments.rounds,
                                                            sites=arguments.sites).as_dict())
        runs.update({name: _report.median_run(done) for name, done in tries.items() if done})
        if "demo" not in arguments.skip:
            print("in-memory FedAvg floor ...", flush=True)
            runs["inmemory_floor"] = inmemory_floor(scratch, rounds=arguments.rounds, sites=arguments.sites).as_dict()
        if "sites" not in arguments.skip:
            print("fedgrove sites mode ...", flush=True)
            runs["fedgrove_sites"] = sites_mode(scratch, rounds=arguments.rounds, sites=arguments.sites).as_dict()
        if "deployment" not in arguments.skip:
            print("Flower deployment ...", flush=True)
            runs["flower_deployment"] = deployment(
                task_dir, scratch, sites=arguments.sites, rounds=min(arguments.deployment_rounds, arguments.rounds),
                timeout_s=arguments.deployment_timeout).as_dict()
            clientapp = clientapp_start_cost()
    by_round = task["reference"]["pooled_accuracy_by_round"]
    for run in runs.values():  # the reference after as many rounds as the run did
        run["reference_accuracy_test"] = by_round[run["rounds_done"] - 1] if run["rounds_done"] else None
    equal = {name: run["accuracy_test"] == run["reference_accuracy_test"] for name, run in runs.items()
             if run.get("accuracy_test") is not None}
    notes = [f"Flower's venv ready in {venv_s:.0f} s (flwr {versions()['flwr']}, ray {versions()['ray']}, torch "
             f"{versions()['torch']}); simulation with {arguments.flower_cpus_per_client:g} Ray CPUs per virtual "
             f"client on {os.cpu_count()} cores.",
             "Per round: fedgrove, the slowest site's round (fit to evaluation); Flower, the ServerApp's round "
             "(training sent to evaluation aggregated). Both train and evaluate every site every round.",
             "fedgrove sites mode: a `prefect server` on PostgreSQL with its task-run recorder batched (the README's "
             "settings), the project's deployments, a process worker per site with only its own data file and leaf "
             "credentials, the "
             "coordinator on a worker of its own, the aggregator as a process; timed from `prefect deployment run` "
             "to the final state, with the server and workers already up, as at a consortium.",
             "Every run in this table comes from this one invocation, one after the other on the same machine; the "
             "load average before and after is in the header."]
    if arguments.pairs > 1:
        notes.append(_report.pairs_sentence(runs))
    deployed = runs.get("flower_deployment")
    if deployed is not None:
        notes.append(
            f"Flower's deployment mode ran the task's first {deployed['rounds_done']} of {arguments.rounds} rounds "
            f"(--deployment-rounds). Each message to a SuperNode starts a fresh `flwr-clientapp` process (install "
            f"the app bundle, import the ClientApp, answer one message, exit): {deployed['processes']} processes in "
            f"this run, {deployed['cpu_s']:.0f} s of CPU in all. Importing flwr's ClientApp API and torch alone "
            f"costs {clientapp['cpu_s']:.1f} s of CPU ({clientapp['wall_s']:.1f} s wall) per process, 2 × "
            f"{arguments.sites} processes a round: ≥ {2 * arguments.sites * clientapp['cpu_s'] / (os.cpu_count() or 1):.1f} "
            f"s a round on {os.cpu_count()} cores before any message is handled.")
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "sites": arguments.sites,
        "rounds": arguments.rounds,
        "features": task["features"],
        "reference_accuracy_test": reference,
        "reference_parameters": task["reference"]["parameters"],
        "runs": runs,
        "accuracy_equal": equal,
        "ratios": _report.ratios(runs),
        "targets": _report.verdicts(runs),
        "notes": notes,
    }
    print(_report.write(figures))
    if not all(equal.values()):
        raise SystemExit(f"a run's final accuracy differs from the in-memory reference {reference}: {equal}: the "
                         "runs did not train the same task")


if __name__ == "__main__":
    main()
