"""fedgrove's side of the peers benchmark: `fedgrove demo` run exactly as `bench/end_to_end.py` runs it.

Why this module exists: the peers must be compared with the demo as users run it and as the end-to-end
benchmark times it: a fresh `fedgrove demo` process (Prefect's temporary server, the embedded aggregator, the
official client, a leaf flow per site) on a fresh PREFECT_HOME holding the migrated schema copy a machine has
after its first demo, its whole process tree's RSS sampled every 50 ms. The functions are
`bench/end_to_end.py`'s own (`warm_prefect_home`, `run_demo`), so both benchmarks time the same thing. Its steady
round is the median, over the rounds after the first, of the slowest site's round (the sites' published
`round_seconds`: from a round's fit to the end of its evaluation).
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: end_to_end.py

import end_to_end  # noqa: E402


@dataclass(frozen=True)
class FedgroveFigures:
    mode: str
    wall_s: float
    first_round_s: float | None
    per_round_s: float | None
    rounds_done: int
    peak_mb: float
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
