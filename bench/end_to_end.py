"""Times the demo end to end against the floor: the same FedAvg loop in plain numpy/torch, in memory.

    python bench/end_to_end.py [--rounds 50] [--sites 5]

Runs `fedgrove demo` as a fresh process (Prefect's ephemeral server, the embedded aggregator, the official
client, 5 leaf flows, baselines, outputs) while sampling the RSS of its whole process tree, then runs the
in-memory simulation of the same spec over the same site files in this process (`fedgrove.simulation`, its
rounds only: preprocessing and baselines are timed apart). Prints and writes to bench/results/end_to_end.{json,md}:
the whole demo's wall time, its per-round time once running (median over rounds), the floor's per-round
time, their ratio and difference (the per-round overhead), and peak memory across all processes.

A second floor, Prefect's own (`_prefect_floor.py`, a fresh process set up as the demo sets up Prefect):
the same flows and threads with empty task runs, as many per site per round as the demo's leaf has
(`flows.leaf_training.TASK_RUNS_PER_ROUND`).
It splits the overhead into what Prefect's engine costs for that many task runs on this machine and what
the pipeline adds (the official client, the server, files, metrics). It also reports the CPU those empty task
runs cost Prefect's client and its server per round: divided by the cores, that is a lower bound on the time
per round with this many task runs here, however the work is spread over threads or processes. Empty task
runs end before Prefect's server has recorded them, so it also reports that server's CPU per task run counting
the recording it finishes afterwards (the demo's slower rounds leave it no backlog: it pays that cost within
its rounds).

It also times where the machine's CPU goes in the demo: each of its processes' CPU per round (the demo's own,
Prefect's temporary server, the aggregator), from this run less a run of a fifth of its rounds. All of it
divided by the cores is a lower bound on the demo's wall per round, the bound it runs at when that CPU is
what it waits for.

The Prefect homes get the migrated schema copy before the timed runs, as a machine has after its first demo:
the first run on a machine builds it, which adds ~5 s to that run (measured: temporary server ready after 22 s
the first time, 6–7 s after).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from flows.leaf_training import TASK_RUNS_PER_ROUND

RESULTS = Path(__file__).parent / "results"
TARGETS = {"per_round_overhead_ms": 90.0, "demo_wall_s": 20.0, "peak_memory_mb": 1024.0}


def tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:  # the demo has just exited
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def warm_prefect_home(home: Path) -> Path:
    """Build the migrated schema copy the demo's temporary Prefect server starts from, as the first run on a
    machine does (`fedgrove/prefect_server_app.py`), so the timed runs are like every later one."""
    import prefect

    from fedgrove.prefect_server_app import schema_template

    return schema_template(home, prefect.__version__)


# A child process of the demo is known by its command line; everything else is the demo's own process.
CHILD_ROLES = (("aggregator", "-m aggregator"), ("prefect_server", "uvicorn"))
ROLE_NAMES = {"flow": "the demo's process (5 leaves, coordinator, Prefect's client, official clients)",
              "prefect_server": "Prefect's temporary server", "aggregator": "the aggregator"}


@dataclass
class DemoRun:
    wall_s: float
    peak_rss: int
    summary: dict
    cpu_s: dict[str, float]  # role (ROLE_NAMES) -> CPU seconds, user + system, over the whole run


def run_demo(rounds: int, sites: int, workdir: Path) -> tuple[float, int, dict]:
    run = run_demo_measured(rounds, sites, workdir)
    return run.wall_s, run.peak_rss, run.summary


def run_demo_measured(rounds: int, sites: int, workdir: Path, extra_env: dict[str, str] | None = None) -> DemoRun:
    """`fedgrove demo` in a fresh process: its wall time, the peak RSS of its process tree, its summary, and the
    CPU of each process of the tree. The tree's total CPU is exact (this process's reaped children, which
    count the demo's reaped children); the aggregator's and Prefect's server's are their last samples, every
    50 ms, and the demo's process has the rest."""
    env = {
        **os.environ,
        "FEDGROVE_WORK_DIR": str(workdir / "work"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_HOME": str(workdir / "prefect-home"),
        **(extra_env or {}),
    }
    command = [
        str(Path(sys.executable).with_name("fedgrove")), "demo", "--rounds", str(rounds),
        "--sites", str(sites), "--out", str(workdir / "runs"), "--run-id", "bench",
    ]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = psutil.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir)
    peak = 0
    child_cpu: dict[int, tuple[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(process))
            try:
                children = process.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    line = " ".join(child.cmdline())
                    role = next((role for role, mark in CHILD_ROLES if mark in line), None)
                    if role is not None:
                        child_cpu[child.pid] = (role, sum(child.cpu_times()[:2]))
                except psutil.Error:
                    pass
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate(timeout=1800)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"fedgrove demo failed ({process.returncode}):\n{stderr.decode()[-3000:]}")
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (children_after.ru_utime - children_before.ru_utime) + (children_after.ru_stime - children_before.ru_stime)
    cpu = {role: 0.0 for role in ROLE_NAMES}
    for role, seconds in child_cpu.values():
        cpu[role] += seconds
    cpu["flow"] = total - cpu["aggregator"] - cpu["prefect_server"]
    summary = json.loads((workdir / "runs" / "bench" / "summary.json").read_text())
    return DemoRun(wall, peak, summary, cpu)


def cpu_per_round(long: DemoRun, short: DemoRun, rounds_between: int) -> dict[str, float]:
    """Each process's CPU per round in ms: the difference of a long and a short run over the rounds between,
    so start-up, feature selection, baselines and shutdown drop out."""
    per_round = {role: (long.cpu_s[role] - short.cpu_s[role]) * 1000 / rounds_between for role in ROLE_NAMES}
    return {**per_round, "total": sum(per_round.values())}


def prefect_floor(rounds: int, sites: int, workdir: Path, tasks_per_round: int = TASK_RUNS_PER_ROUND,
                  extra_env: dict[str, str] | None = None) -> dict[str, float]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_HOME": str(workdir / "prefect-floor-home"),
        **(extra_env or {}),
    }
    script = Path(__file__).with_name("_prefect_floor.py")
    done = subprocess.run(
        [sys.executable, str(script), str(rounds), str(sites), str(tasks_per_round), "--until-recorded"],
        env=env, capture_output=True, text=True, timeout=1800, cwd=workdir,
    )
    if done.returncode != 0:
        raise SystemExit(f"Prefect floor failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def floor_seconds_per_round(rounds: int, sites: int, workdir: Path) -> float:
    """The simulation's time per round on the demo's own site files: the spec's rounds minus one round, so the
    preprocessing (the same in both) drops out."""
    return floor_timings(rounds, sites, workdir)[1]


def floor_timings(rounds: int, sites: int, workdir: Path) -> tuple[float, float]:
    """The in-memory simulation on the demo's own site files: its whole run (preprocessing and every round, in
    this process) and its time per round (`floor_seconds_per_round`)."""
    from fedgrove.demo import DemoOptions, demo_spec
    from fedgrove.site_table import table_for_spec
    from fedgrove.sources import DataSource, read_source

    data = workdir / "work" / "runs" / "bench" / "data"
    spec = demo_spec({f"site-{i}": data / f"site-{i}.csv" for i in range(1, sites + 1)}, DemoOptions(rounds=rounds))
    tables = {site: table_for_spec(read_source(DataSource(data=str(source.data))), spec, site)
              for site, source in spec.sites.items()}

    return simulated_timings(spec, tables)


def simulated_timings(spec, tables) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The in-memory federation of `spec` over `tables`: its whole run and its time per round (the spec's rounds
    minus one round, so the preprocessing drops out), after a warm-up."""
    from fedgrove.simulation import simulate

    def timed(rounds: int) -> float:
        shorter = spec.model_copy(update={"train": spec.train.model_copy(update={"rounds": rounds})})
        started = time.perf_counter()
        simulate(shorter, tables, baselines=False, centralised=False)
        return time.perf_counter() - started

    timed(2)  # warm-up
    whole = timed(spec.train.rounds)
    return whole, (whole - timed(1)) / (spec.train.rounds - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--sites", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedgrove-bench-") as folder:
        workdir = Path(folder)
        for home in ("prefect-home", "prefect-floor-home", "short/prefect-home"):
            warm_prefect_home(workdir / home)
        demo = run_demo_measured(arguments.rounds, arguments.sites, workdir)
        wall, peak, summary = demo.wall_s, demo.peak_rss, demo.summary
        short_rounds = max(1, arguments.rounds // 5)
        cpu = cpu_per_round(demo, run_demo_measured(short_rounds, arguments.sites, workdir / "short"),
                            arguments.rounds - short_rounds)
        floor = floor_seconds_per_round(arguments.rounds, arguments.sites, workdir)
        prefect = prefect_floor(arguments.rounds, arguments.sites, workdir)
    per_round = summary["seconds_per_round"]
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
        "sites": arguments.sites,
        "rounds": arguments.rounds,
        "demo_wall_s": round(wall, 2),
        "flow_wall_s": summary["wall_s"],
        "per_round_ms": round(per_round * 1000, 1),
        "floor_per_round_ms": round(floor * 1000, 2),
        "ratio_to_floor": round(per_round / floor, 1),
        "per_round_overhead_ms": round((per_round - floor) * 1000, 1),
        "prefect_floor_per_round_ms": round(prefect["round_median_s"] * 1000, 1),
        "prefect_floor_first_flow_s": round(prefect["first_flow_s"], 2),
        "prefect_floor_whole_s": round(prefect["whole_s"], 2),
        "overhead_beyond_prefect_ms": round((per_round - floor - prefect["round_median_s"]) * 1000, 1),
        "prefect_client_cpu_ms_per_task_run": round(prefect["client_cpu_ms_per_task_run"], 2),
        "prefect_server_cpu_ms_per_task_run": round(prefect["server_cpu_ms_per_task_run"], 2),
        "prefect_cpu_ms_per_round": round(prefect["cpu_ms_per_round"], 1),
        "prefect_leaves_wall_per_round_ms": round(prefect["leaves_wall_per_round_s"] * 1000, 1),
        "prefect_shortest_round_ms": round(prefect["cpu_ms_per_round"] / (os.cpu_count() or 1), 1),
        "prefect_server_cpu_ms_per_task_run_recorded": round(prefect["server_cpu_ms_per_task_run_recorded"], 2),
        "prefect_recorded_after_s": round(prefect["recorded_after_s"], 2),
        "peak_memory_mb": round(peak / 2**20),
        "cpu_ms_per_round": {role: round(value, 1) for role, value in cpu.items()},
        "cpu_rounds": f"{short_rounds + 1}-{arguments.rounds}",
        "shortest_round_by_cpu_ms": round(cpu["total"] / (os.cpu_count() or 1), 1),
        "federated_accuracy_test": summary["federated_pooled"]["accuracy_test"],
        "centralised_accuracy_test": summary["centralised"]["accuracy_test"],
    }
    verdicts = {name: figures[name] <= target for name, target in TARGETS.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "end_to_end.json").write_text(json.dumps({**figures, "targets": TARGETS, "met": verdicts}, indent=2))
    rows = [
        ("whole demo, wall (s), fresh process incl. Prefect start", figures["demo_wall_s"], f"≤ {TARGETS['demo_wall_s']:g}"),
        ("coordinator flow, wall (s)", figures["flow_wall_s"], ""),
        ("per round, median (ms)", figures["per_round_ms"], ""),
        ("floor: in-memory FedAvg per round (ms)", figures["floor_per_round_ms"], ""),
        ("ratio per round / floor", figures["ratio_to_floor"], ""),
        ("per-round overhead (ms)", figures["per_round_overhead_ms"], f"≤ {TARGETS['per_round_overhead_ms']:g}"),
        ("peak memory, all processes (MB)", figures["peak_memory_mb"], f"≤ {TARGETS['peak_memory_mb']:g}"),
        (f"Prefect floor: empty task runs ({TASK_RUNS_PER_ROUND} per site) per round, median (ms)",
         figures["prefect_floor_per_round_ms"], ""),
        ("Prefect floor: process start to the first flow's body (s)", figures["prefect_floor_first_flow_s"], ""),
        ("Prefect floor: whole run of empty tasks (s)", figures["prefect_floor_whole_s"], ""),
        ("per-round overhead beyond Prefect's floor (ms)", figures["overhead_beyond_prefect_ms"], ""),
        ("Prefect floor: CPU per task run, its client (this process) / its server (ms)",
         f"{figures['prefect_client_cpu_ms_per_task_run']} / {figures['prefect_server_cpu_ms_per_task_run']}", ""),
        ("Prefect floor: the leaf subflows' whole run ÷ rounds (ms)", figures["prefect_leaves_wall_per_round_ms"], ""),
        ("Prefect floor: their CPU per round, client + server (ms)", figures["prefect_cpu_ms_per_round"], ""),
        (f"Prefect floor: lower bound on that wall per round = CPU per round ÷ {os.cpu_count()} cores (ms)",
         figures["prefect_shortest_round_ms"], ""),
        ("Prefect floor: its server's CPU per task run, counting the recording it finishes after the runs (ms)",
         figures["prefect_server_cpu_ms_per_task_run_recorded"], ""),
        ("Prefect floor: how long after the last run its server was still recording (s)",
         figures["prefect_recorded_after_s"], ""),
        *[(f"demo: CPU per round, {ROLE_NAMES[role]} (ms)", figures["cpu_ms_per_round"][role], "")
          for role in ROLE_NAMES],
        ("demo: CPU per round, all its processes (ms)", figures["cpu_ms_per_round"]["total"], ""),
        (f"demo: lower bound on its wall per round = that CPU ÷ {os.cpu_count()} cores (ms)",
         figures["shortest_round_by_cpu_ms"], ""),
    ]
    lines = [
        f"End-to-end demo, {arguments.sites} sites × {arguments.rounds} rounds — "
        f"{figures['date']}, {figures['machine']['cores']} cores, {figures['machine']['memory_gb']} GB, "
        f"Python {figures['machine']['python']}",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        *[f"| {name} | {value} | {target} |" for name, value, target in rows],
        "",
        "Targets met: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in verdicts.items()),
        "",
        f"The demo's CPU per round is that of rounds {figures['cpu_rounds']}: a run of {short_rounds} rounds "
        f"subtracted from this one, so start-up, feature selection and shutdown drop out. The site-alone and "
        f"centralised baselines train one epoch per round, so those epochs are in it (`bench/round_budget.py` "
        f"counts them apart).",
    ]
    (RESULTS / "end_to_end.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
