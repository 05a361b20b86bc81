"""Where a round's CPU goes in the demo's own process, beside Prefect's floor: the budget behind the overhead target.

    .venv/bin/python bench/round_budget.py [--rounds 50] [--sites 5]

A local round waits on one process: the demo's, which holds the leaves, Prefect's client and the official
clients under one interpreter lock (`bench/end_to_end.py`). The overhead target (issue #21: the demo's round
beyond the in-memory FedAvg round and Prefect's floor's round ≤ 30 ms) is therefore a budget of that process's
CPU. This benchmark runs `fedgrove demo` and Prefect's floor (`_prefect_floor.py`, the demo's flows with empty
task runs), each at the given rounds and at a fifth of them, as fresh processes with the CPU probe
(`bench/_cpu_probe/`: per-thread CPU clocks around Prefect's task and flow runs, the task bodies, the official
client's calls and the model's fit and measurement). Each figure per round is the difference of the two runs
over the rounds between, so start-up, feature selection and shutdown drop out; the baselines, which train one
epoch per round, are counted apart. Writes bench/results/round_budget.{json,md}.

The probe's own cost (two clock reads per wrapped call) is in both runs, and in the demo's and the floor's alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import psutil
from _results import publish
from end_to_end import (
    floor_timings,
    prefect_floor,
    run_demo_measured,
    warm_prefect_home,
)

from flows.leaf_training import TASK_RUNS_PER_ROUND

PROBE = Path(__file__).resolve().parent / "_cpu_probe"
OVERHEAD_TARGET_MS = 30.0
ROUND_TASKS = ("fit-local", "upload-parameters", "wait-for-aggregation", "reload-and-evaluate")
BASELINE_TASKS = ("train-alone", "train-centralised")
FLOOR_TASK = "empty_step"
PREFECT_THREADS = ("GlobalEventLoopThread", "EventsWorkerThread", "APILogWorkerThread", "RunSyncEventLoopThread")


def probed(run, workdir: Path, name: str) -> dict:
    """Run `run(extra_env)` with the probe on and return what the probe wrote."""
    out = workdir / f"{name}.probe.json"
    run({"PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
         "FEDGROVE_CPU_PROBE_OUT": str(out)})
    return json.loads(out.read_text())


def _sum(probe: dict, test) -> float:
    return sum(seconds for key, seconds in probe["cpu_s"].items() if test(key.split("|")))


def components(probe: dict, *, round_tasks: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds of one run by component (see `ROWS`). The leaves' threads are those that run flows, other than
    the main thread's (the coordinator's)."""
    leaf_threads = {key.split("|")[1] for key in probe["cpu_s"] if key.startswith("flow_run|")} - {"MainThread"}
    task_runs = _sum(probe, lambda k: k[0] == "task_run" and k[1] in round_tasks)
    bodies = _sum(probe, lambda k: k[0] == "body" and k[1] in round_tasks)
    leaf_task_runs = _sum(probe, lambda k: k[0] == "task_run" and k[2] in leaf_threads)
    leaf_flows = _sum(probe, lambda k: k[0] == "flow_run" and k[1] in leaf_threads)
    baselines = _sum(probe, lambda k: k[0] == "task_run" and k[1] in BASELINE_TASKS)
    threads = probe["threads_cpu_s"]
    prefect_threads = sum(threads.get(name, 0.0) for name in PREFECT_THREADS)
    return {
        "engine": task_runs - bodies,
        "bodies": bodies,
        "client": _sum(probe, lambda k: k[0] == "client" and k[2] in round_tasks),
        "compute": _sum(probe, lambda k: k[0] == "compute" and k[2] in round_tasks),
        "round_task_runs": float(sum(n for key, n in probe["calls"].items()
                                     if key.split("|")[0] == "task_run" and key.split("|")[1] in round_tasks)),
        "leaf_flows_outside_task_runs": leaf_flows - leaf_task_runs,
        "checkpoint": _sum(probe, lambda k: k[0] == "checkpoint" and k[2] == "-"),
        "prefect_threads": prefect_threads,
        "baselines": baselines,
        "process": probe["process_cpu_s"],
        "rest": probe["process_cpu_s"] - task_runs - (leaf_flows - leaf_task_runs) - prefect_threads - baselines,
    }


def per_round(long: dict[str, float], short: dict[str, float], rounds_between: int) -> dict[str, float]:
    return {key: (long[key] - short[key]) / rounds_between for key in long}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--sites", type=int, default=5)
    arguments = parser.parse_args()
    rounds, sites = arguments.rounds, arguments.sites
    load_before = list(os.getloadavg())
    short_rounds = max(1, rounds // 5)
    between = rounds - short_rounds
    with tempfile.TemporaryDirectory(prefix="fedgrove-budget-") as folder:
        workdir = Path(folder)
        for home in ("long/prefect-home", "short/prefect-home", "long/prefect-floor-home",
                     "short/prefect-floor-home"):
            warm_prefect_home(workdir / home)
        runs: dict[str, dict] = {}
        for label, count in (("long", rounds), ("short", short_rounds)):
            where = workdir / label
            demo_run: dict = {}

            def demo(extra_env: dict[str, str], where: Path = where, count: int = count, kept: dict = demo_run) -> None:
                kept["run"] = run_demo_measured(count, sites, where, extra_env=extra_env)

            def floor(extra_env: dict[str, str], where: Path = where, count: int = count, kept: dict = demo_run) -> None:
                kept["floor"] = prefect_floor(count, sites, where, extra_env=extra_env)

            runs[f"demo_{label}"] = probed(demo, where, "demo")
            runs[f"floor_{label}"] = probed(floor, where, "floor")
            runs[f"{label}_figures"] = {"demo_round_s": demo_run["run"].summary["seconds_per_round"],
                                        "floor_round_s": demo_run["floor"]["round_median_s"]}
        inmemory_round_s = floor_timings(rounds, sites, workdir / "long")[1]
    demo = per_round(components(runs["demo_long"], round_tasks=ROUND_TASKS),
                     components(runs["demo_short"], round_tasks=ROUND_TASKS), between)
    floor = per_round(components(runs["floor_long"], round_tasks=(FLOOR_TASK,)),
                      components(runs["floor_short"], round_tasks=(FLOOR_TASK,)), between)
    figures = budget(demo, floor, demo_round_s=runs["long_figures"]["demo_round_s"],
                     floor_round_s=runs["long_figures"]["floor_round_s"], inmemory_round_s=inmemory_round_s,
                     sites=sites)
    figures.update({
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
        "load_average_before": load_before,
        "sites": sites, "rounds": rounds, "cpu_rounds": f"{short_rounds + 1}-{rounds}",
        "probes": {key: value for key, value in runs.items() if not key.endswith("_figures")},
    })
    publish("round_budget", figures, markdown(figures))


def budget(demo: dict[str, float], floor: dict[str, float], *, demo_round_s: float, floor_round_s: float,
           inmemory_round_s: float, sites: int) -> dict:
    """Milliseconds per round of `sites` sites: each component in the demo's process and the floor's, and what
    the overhead target leaves for the pipeline at the demo process's measured share of a core."""
    ms = {name: {key: value * 1000 for key, value in side.items()} for name, side in (("demo", demo),
                                                                                       ("floor", floor))}
    # Prefect's own work inside a task run's body (handling the returned value): the floor's empty body, per run.
    prefect_in_body = ms["floor"]["bodies"] / ms["floor"]["round_task_runs"] * ms["demo"]["round_task_runs"] \
        if ms["floor"]["round_task_runs"] else 0.0
    ms["demo"]["prefect_in_bodies"] = prefect_in_body
    ms["demo"]["pipeline_in_bodies"] = ms["demo"]["bodies"] - prefect_in_body
    ms["demo"]["own_in_bodies"] = ms["demo"]["pipeline_in_bodies"] - ms["demo"]["client"] - ms["demo"]["compute"]
    ms["floor"]["prefect_in_bodies"] = ms["floor"]["bodies"]
    rounds_only = {side: ms[side]["process"] - ms[side]["baselines"] for side in ms}
    share = rounds_only["demo"] / (demo_round_s * 1000)
    overhead = (demo_round_s - inmemory_round_s - floor_round_s) * 1000
    allowance = share * OVERHEAD_TARGET_MS
    return {
        "ms_per_round": ms,
        "process_rounds_only_ms": rounds_only,
        "demo_round_ms": demo_round_s * 1000,
        "floor_round_ms": floor_round_s * 1000,
        "inmemory_round_ms": inmemory_round_s * 1000,
        "overhead_ms": overhead,
        "demo_process_core_share": share,
        "allowance_cpu_ms": allowance,
        "extra_cpu_ms": rounds_only["demo"] - rounds_only["floor"],
        "compute_beyond_inmemory_ms": ms["demo"]["compute"] - inmemory_round_s * 1000,
        "fixed_cpu_ms": ms["demo"]["client"] + ms["demo"]["checkpoint"] + ms["demo"]["compute"]
        - inmemory_round_s * 1000,
        "sites": sites,
    }


ROWS = (
    ("Prefect's engine around the task runs", "engine"),
    ("Prefect's handling of each task run's return value, inside its body (the floor: its whole empty body)",
     "prefect_in_bodies"),
    ("the pipeline's work in the task bodies", "pipeline_in_bodies"),
    ("   of it, the official client's `file_upload` and `file_download`", "client"),
    ("   of it, the model's fit and measurement", "compute"),
    ("   of it, the rest: archives, checks, metrics, tracking", "own_in_bodies"),
    ("the leaf flows outside their task runs: checkpoints, digests, logs, progress", "leaf_flows_outside_task_runs"),
    ("   of it, the round checkpoint `--resume` starts from, and the round's model kept", "checkpoint"),
    ("Prefect's background threads: its event loop, events and logs", "prefect_threads"),
    ("everything else: the coordinator, the official client's WebSocket threads, the progress bar", "rest"),
)


def markdown(figures: dict) -> list[str]:
    demo, floor = figures["ms_per_round"]["demo"], figures["ms_per_round"]["floor"]
    only = figures["process_rounds_only_ms"]

    def cell(side: dict, key: str) -> str:
        return "—" if key not in side else f"{side[key]:.1f}"

    def difference(key: str) -> str:
        return "—" if key not in demo or key not in floor else f"{demo[key] - floor[key]:+.1f}"

    lines = [f"A round's CPU in the demo's own process, beside Prefect's floor — {figures['sites']} sites, "
             f"{figures['rounds']} rounds, {figures['date']}, {figures['machine']['cores']} cores, load average "
             f"{figures['load_average_before'][0]:.1f} before",
             "",
             f"CPU per round in ms, rounds {figures['cpu_rounds']} (a run of a fifth of the rounds subtracted); the "
             f"floor's {TASK_RUNS_PER_ROUND} task runs per site per round are empty.",
             "",
             "| where | Prefect's floor | demo | demo − floor |", "|---|---|---|---|"]
    lines += [f"| {label} | {cell(floor, key)} | {cell(demo, key)} | {difference(key)} |" for label, key in ROWS]
    lines += [f"| **the process, rounds only** | {only['floor']:.1f} | {only['demo']:.1f} | "
              f"{only['demo'] - only['floor']:+.1f} |",
              f"| the baselines' epochs (one per round; not in the row above) | — | {demo['baselines']:.1f} | — |",
              "",
              f"- Wall per round: the demo {figures['demo_round_ms']:.1f} ms, Prefect's floor "
              f"{figures['floor_round_ms']:.1f} ms, the in-memory FedAvg round {figures['inmemory_round_ms']:.1f} ms: "
              f"overhead beyond the floors {figures['overhead_ms']:.1f} ms (target ≤ {OVERHEAD_TARGET_MS:g} ms).",
              f"- The demo's process spends {only['demo']:.1f} ms of CPU in a round of {figures['demo_round_ms']:.1f} "
              f"ms: {figures['demo_process_core_share']:.2f} of a core. At that share the target's "
              f"{OVERHEAD_TARGET_MS:g} ms of wall is {figures['allowance_cpu_ms']:.1f} ms of CPU beyond the floor's "
              f"process and the model's compute as the in-memory round runs it; this process spends "
              f"{figures['extra_cpu_ms']:.1f} ms beyond the floor's.",
              f"- Of that, the official client's calls alone take {demo['client']:.1f} ms "
              f"({demo['client'] / figures['allowance_cpu_ms']:.2f} of the allowance). With the round checkpoint "
              f"({demo['checkpoint']:.1f} ms) and what the model's fit and measurement cost here beyond the "
              f"in-memory round's {figures['inmemory_round_ms']:.1f} ms ({figures['compute_beyond_inmemory_ms']:.1f} "
              f"ms), the parts the design fixes (the official client unchanged, a checkpoint every round, the "
              f"model's own work) take {figures['fixed_cpu_ms']:.1f} ms: "
              f"{figures['fixed_cpu_ms'] / figures['allowance_cpu_ms']:.2f} of the allowance.",
              "- The probe's two clock reads per wrapped call are in both processes' figures."]
    return lines


if __name__ == "__main__":
    main()
