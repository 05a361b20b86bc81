"""fedgrove's side of the peers benchmark: `fedgrove demo` run exactly as `bench/end_to_end.py` runs it.

Why this module exists: the peers must be compared with the demo as users run it and as the end-to-end
benchmark times it: a fresh `fedgrove demo` process (Prefect's temporary server, the embedded aggregator, the
official client, a leaf flow per site) on a fresh PREFECT_HOME holding the migrated schema copy a machine has
after its first demo, its whole process tree's RSS sampled every 50 ms. The functions are
`bench/end_to_end.py`'s own (`warm_prefect_home`, `run_demo`), so both benchmarks time the same thing. Its steady
round is the median, over the rounds after the first, of the slowest site's round (the sites' published
`round_seconds`: from a round's fit to the end of its evaluation).

The demo's two floors are measured here too, after the demo and on its own site files, with
`bench/end_to_end.py`'s own code: the in-memory FedAvg floor (`fedgrove.simulation.simulate`, in this process)
and Prefect's own floor (`_prefect_floor.py`: the same flows and threads with empty task runs, as many per site per
round as the demo's leaf has, as a fresh process whose tree's memory is sampled like every other run's).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: end_to_end.py

import end_to_end  # noqa: E402
from _processes import run_sampled, tail  # noqa: E402

from flows.leaf_training import TASK_RUNS_PER_ROUND  # noqa: E402

PREFECT_FLOOR_SCRIPT = Path(__file__).resolve().parents[1] / "_prefect_floor.py"


@dataclass(frozen=True)
class FedgroveFigures:
    mode: str
    wall_s: float
    first_round_s: float | None
    per_round_s: float | None
    rounds_done: int
    peak_mb: float | None  # None: measured inside the benchmark's own process (the in-memory floor)
    accuracy_test: float | None
    flow_wall_s: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def site_round_seconds(run_folder: Path) -> list[list[float]]:
    """Each site's `round_seconds`, from the results the leaves published to the run's folder."""
    rounds = []
    for path in sorted(run_folder.glob("site-*.json")):
        published = json.loads(path.read_text())
        if isinstance(published, dict) and "round_seconds" in published:
            rounds.append([float(s) for s in published["round_seconds"]])
    return rounds


def slowest_rounds(per_site: list[list[float]]) -> list[float]:
    """Per round, the slowest site's time: a round is over for the federation when its last site is done."""
    if not per_site:
        return []
    return [max(site[index] for site in per_site) for index in range(min(len(site) for site in per_site))]


def demo(scratch: Path, *, rounds: int, sites: int) -> FedgroveFigures:
    workdir = scratch / "fedgrove-demo"
    workdir.mkdir(parents=True, exist_ok=True)
    end_to_end.warm_prefect_home(workdir / "prefect-home")
    wall, peak, summary = end_to_end.run_demo(rounds, sites, workdir)
    slowest = slowest_rounds(site_round_seconds(workdir / "runs" / "bench"))
    return FedgroveFigures(
        mode="demo", wall_s=wall, first_round_s=slowest[0] if slowest else None,
        per_round_s=statistics.median(slowest[1:]) if len(slowest) > 1 else summary.get("seconds_per_round"),
        rounds_done=len(slowest), peak_mb=peak / 2**20,
        accuracy_test=summary["federated_pooled"]["accuracy_test"], flow_wall_s=summary.get("wall_s"))


def inmemory_floor(scratch: Path, *, rounds: int, sites: int) -> FedgroveFigures:
    """The same FedAvg loop in plain numpy/torch, in this process, on the demo's site files (`demo` first)."""
    whole, per_round = end_to_end.floor_timings(rounds, sites, scratch / "fedgrove-demo")
    return FedgroveFigures(mode="in-memory floor", wall_s=whole, first_round_s=None, per_round_s=per_round,
                           rounds_done=rounds, peak_mb=None, accuracy_test=None,
                           note="preprocessing and every round, in the benchmark's process: no start-up, "
                                "no memory figure of its own")


def prefect_floor(scratch: Path, *, rounds: int, sites: int, tasks_per_round: int = TASK_RUNS_PER_ROUND,
                  timeout_s: float = 1800.0) -> FedgroveFigures:
    """Prefect's own floor: a fresh process running the demo's flows with empty task runs, its tree sampled."""
    workdir = scratch / "prefect-floor"
    workdir.mkdir(parents=True, exist_ok=True)
    end_to_end.warm_prefect_home(workdir / "prefect-floor-home")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_HOME": str(workdir / "prefect-floor-home")}
    log = workdir / "prefect-floor.log"
    timed = run_sampled([sys.executable, str(PREFECT_FLOOR_SCRIPT), str(rounds), str(sites), str(tasks_per_round)],
                        env=env, cwd=workdir, log=log, timeout_s=timeout_s)
    figures: dict = {}
    for line in reversed(log.read_text(errors="replace").splitlines()):
        try:
            figures = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(figures, dict) and "round_median_s" in figures:
            break
        figures = {}
    if timed.returncode != 0 or not figures:
        raise SystemExit(f"Prefect's floor failed ({timed.returncode}):\n{tail(log, 30)}")
    return FedgroveFigures(
        mode="Prefect floor", wall_s=timed.wall_s, first_round_s=None, per_round_s=figures["round_median_s"],
        rounds_done=rounds, peak_mb=timed.peak_mb, accuracy_test=None,
        note=f"empty task runs, {tasks_per_round} per site per round; per round: median of the slowest site's "
             f"(all rounds); Prefect's CPU per task run {figures['client_cpu_ms_per_task_run']:.1f} ms client / "
             f"{figures['server_cpu_ms_per_task_run']:.1f} ms server")
