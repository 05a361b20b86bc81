"""The peers benchmark's table, verdicts and files: `bench/results/peers.{json,md}`.

Why this module exists: the figures of one invocation (fedgrove and its peers, measured one after the other
on the same machine) become the ratios fedgrove / Flower and the issue's targets, each PASS or MISS with the
figure behind it; no figure is ever taken from an earlier run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
MEMORY_TARGET_MB = 1024.0
OVERHEAD_TARGET_MS = 30.0
SITES_ROUND_SHARE = 1 / 5


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def paired_overheads_ms(runs: Mapping[str, Mapping[str, Any]]) -> list[float]:
    """Per pair of the demo and Prefect's floor taken in turn: the demo's round minus the in-memory FedAvg round
    minus that pair's Prefect round. Empty unless both were run the same number of times, more than once."""
    demo, floor, prefect = (runs.get(key) or {} for key in ("fedgrove_demo", "inmemory_floor", "prefect_floor"))
    demo_rounds, prefect_rounds = demo.get("per_rounds_ms") or [], prefect.get("per_rounds_ms") or []
    if floor.get("per_round_s") is None or len(demo_rounds) < 2 or len(demo_rounds) != len(prefect_rounds):
        return []
    if None in demo_rounds or None in prefect_rounds:
        return []
    return [ours - floor["per_round_s"] * 1000 - prefect for ours, prefect in zip(demo_rounds, prefect_rounds)]


def overhead_beyond_prefect_ms(runs: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The pipeline's steady round beyond its floors: the demo's round minus the in-memory FedAvg round minus
    Prefect's own round (empty task runs) of the same invocation. When the demo and Prefect's floor took turns,
    the median of the pairs' differences: the floor drifts from run to run as much as the demo does."""
    paired = paired_overheads_ms(runs)
    if paired:
        return statistics.median(paired)
    demo, floor, prefect = (runs.get(key) or {} for key in ("fedgrove_demo", "inmemory_floor", "prefect_floor"))
    if None in (demo.get("per_round_s"), floor.get("per_round_s"), prefect.get("per_round_s")):
        return None
    return (demo["per_round_s"] - floor["per_round_s"] - prefect["per_round_s"]) * 1000


def verdicts(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's targets, from this invocation's own runs: the demo's whole run ≤ Flower's simulation's; the
    pipeline's round beyond Prefect's floor ≤ 30 ms; the demo's peak ≤ 1 GB; sites mode's round ≤ 1/5 of Flower's
    deployment round. A target whose figures were not measured is a MISS, said so: never a figure from elsewhere."""
    demo, simulation = runs.get("fedgrove_demo"), runs.get("flower_simulation")
    deployment, sites = runs.get("flower_deployment"), runs.get("fedgrove_sites")
    targets: dict[str, dict[str, Any]] = {}
    if demo and simulation:
        targets["demo whole run ≤ Flower simulation's"] = {
            "figure": f"{demo['wall_s']:.1f} s vs {simulation['wall_s']:.1f} s",
            "met": demo["wall_s"] <= simulation["wall_s"]}
    else:
        targets["demo whole run ≤ Flower simulation's"] = {"figure": "not measured in this run", "met": None}
    overhead = overhead_beyond_prefect_ms(runs)
    if overhead is not None:
        targets[f"pipeline per-round overhead beyond Prefect's floor ≤ {OVERHEAD_TARGET_MS:g} ms"] = {
            "figure": _overhead_figure(overhead, runs),
            "met": overhead <= OVERHEAD_TARGET_MS}
    else:
        targets[f"pipeline per-round overhead beyond Prefect's floor ≤ {OVERHEAD_TARGET_MS:g} ms"] = {
            "figure": "not measured in this run", "met": None}
    if demo:
        targets["peak memory of all processes ≤ 1 GB (demo)"] = {"figure": f"{demo['peak_mb']:.0f} MB",
                                                                 "met": demo["peak_mb"] <= MEMORY_TARGET_MB}
    if sites and deployment and sites.get("per_round_s") and deployment.get("per_round_s"):
        targets["sites mode per round ≤ 1/5 of Flower deployment's"] = {
            "figure": f"{sites['per_round_s'] * 1000:.0f} ms vs {deployment['per_round_s'] * 1000:.0f} ms "
                      f"(target ≤ {deployment['per_round_s'] * SITES_ROUND_SHARE * 1000:.0f} ms)",
            "met": sites["per_round_s"] <= deployment["per_round_s"] * SITES_ROUND_SHARE}
    else:
        flower = (f"Flower deployment {deployment['per_round_s'] * 1000:.0f} ms a round, so the target is ≤ "
                  f"{deployment['per_round_s'] * SITES_ROUND_SHARE * 1000:.0f} ms; "
                  if deployment and deployment.get("per_round_s") else "")
        targets["sites mode per round ≤ 1/5 of Flower deployment's"] = {
            "figure": flower + ("fedgrove sites mode not measured: this benchmark does not run it" if not sites
                                else "not measured in this run"), "met": None}
    return targets


def _overhead_figure(overhead: float, runs: Mapping[str, Mapping[str, Any]]) -> str:
    inmemory = runs["inmemory_floor"]["per_round_s"] * 1000
    paired = paired_overheads_ms(runs)
    if paired:
        pairs = ", ".join(f"{ours:.1f} − {prefect:.1f}" for ours, prefect in
                          zip(runs["fedgrove_demo"]["per_rounds_ms"], runs["prefect_floor"]["per_rounds_ms"]))
        return (f"{overhead:.1f} ms (median of {len(paired)} pairs, each the demo's round − {inmemory:.1f} "
                f"in-memory − Prefect's round, in ms: {pairs}; so {', '.join(f'{value:.1f}' for value in paired)})")
    return (f"{overhead:.1f} ms ({runs['fedgrove_demo']['per_round_s'] * 1000:.1f} − {inmemory:.1f} in-memory − "
            f"{runs['prefect_floor']['per_round_s'] * 1000:.1f} Prefect)")


def ratios(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    demo, simulation = runs.get("fedgrove_demo") or {}, runs.get("flower_simulation") or {}
    deployment, sites = runs.get("flower_deployment") or {}, runs.get("fedgrove_sites") or {}
    floor, prefect = runs.get("inmemory_floor") or {}, runs.get("prefect_floor") or {}
    return {
        "demo_over_simulation_wall": _ratio(demo.get("wall_s"), simulation.get("wall_s")),
        "demo_over_simulation_per_round": _ratio(demo.get("per_round_s"), simulation.get("per_round_s")),
        "demo_over_simulation_peak_memory": _ratio(demo.get("peak_mb"), simulation.get("peak_mb")),
        "demo_over_deployment_per_round": _ratio(demo.get("per_round_s"), deployment.get("per_round_s")),
        "demo_over_prefect_floor_per_round": _ratio(demo.get("per_round_s"), prefect.get("per_round_s")),
        "demo_over_inmemory_floor_per_round": _ratio(demo.get("per_round_s"), floor.get("per_round_s")),
        "sites_over_deployment_per_round": _ratio(sites.get("per_round_s"), deployment.get("per_round_s")),
        "sites_over_deployment_wall": _ratio(sites.get("wall_s"), deployment.get("wall_s")),
    }


LABELS = {
    "fedgrove_demo": "fedgrove demo (local, `fedgrove demo`)",
    "prefect_floor": "Prefect's own floor (the demo's flows, empty task runs)",
    "inmemory_floor": "in-memory FedAvg floor (`fedgrove.simulation`)",
    "flower_simulation": "Flower 1.41 simulation (Ray, run_simulation)",
    "flower_deployment": "Flower 1.41 deployment (SuperLink + SuperNodes, flwr run)",
    "fedgrove_sites": "fedgrove sites mode (prefect server, a worker per site)",
}


PAIRED = ("flower_simulation", "fedgrove_demo", "prefect_floor")


def median_run(done: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Of runs of the same thing, the one whose whole-run time is the median (of an even count, the lower middle
    one), with every run's whole-run time and steady round, in the order they ran, as `whole_runs_s` and
    `per_rounds_ms`."""
    ordered = sorted(done, key=lambda run: run["wall_s"])
    return {**ordered[(len(ordered) - 1) // 2], "whole_runs_s": [round(run["wall_s"], 1) for run in done],
            "per_rounds_ms": [None if run.get("per_round_s") is None else round(run["per_round_s"] * 1000, 1)
                              for run in done]}


def pairs_sentence(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """What the rows of the runs taken in turn are, and every one of those runs' whole-run time."""
    taken = [name for name in PAIRED if len(runs.get(name, {}).get("whole_runs_s", [])) > 1]
    if not taken:
        return ""
    times = "; ".join(f"{LABELS[name].split(' (')[0]}: {', '.join(f'{wall:.1f}' for wall in runs[name]['whole_runs_s'])} s"
                      for name in taken)
    count = len(runs[taken[0]]["whole_runs_s"])
    names = [LABELS[name].split(" (")[0] for name in taken]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return (f"{listed} ran {count} times each, in turn; "
            f"each row is its run with the median whole-run time (every run, in order: {times}).")


def verdict(met: bool | None) -> str:
    return "MISS (not measured)" if met is None else ("PASS" if met else "MISS")


def markdown(figures: Mapping[str, Any]) -> str:
    runs, reference = figures["runs"], figures["reference_accuracy_test"]
    demo = runs.get("fedgrove_demo") or {}
    load = figures["load_average_before"][0], figures["load_average_after"][0]
    header = (f"Peers: the demo's task ({figures['sites']} sites × {figures['rounds']} rounds) — {figures['date']}, "
              f"{figures['machine']['cores']} cores, {figures['machine']['memory_gb']} GB, load average "
              f"{load[0]:.1f} before / {load[1]:.1f} after"
              + (" (taken under load: other work shared the cores)" if load[0] > 1.0 else "")
              + " (the load after includes the benchmark's own runs)")
    lines = [header, "",
             "| run | whole run (s) | per round, steady (ms) | peak memory, all processes (MB) | demo ÷ row: "
             "whole / round / memory | rounds | CPU (s) | final pooled test accuracy (reference) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        run = runs.get(key)
        if run is None:
            continue
        per_round = run["per_round_s"] * 1000 if run.get("per_round_s") is not None else None
        shares = " / ".join(_cell(_ratio(demo.get(name), run.get(name)), 2)
                            for name in ("wall_s", "per_round_s", "peak_mb"))
        accuracy = ("(the reference)" if key == "inmemory_floor" else "—" if run.get("accuracy_test") is None else
                    f"{_cell(run.get('accuracy_test'), 4)} ({_cell(run.get('reference_accuracy_test'), 4)})")
        lines.append(f"| {label} | {_cell(run['wall_s'], 1)} | {_cell(per_round, 1)} | {_cell(run['peak_mb'], 0)} | "
                     f"{shares} | {run['rounds_done']} | {_cell(run.get('cpu_s'), 0)} | {accuracy} | "
                     f"{run.get('note', '')} |")
    lines += ["", "| target (issue #21) | figure | verdict |", "|---|---|---|"]
    for name, target in figures["targets"].items():
        lines.append(f"| {name} | {target['figure']} | {verdict(target['met'])} |")
    checks = ", ".join(f"{LABELS[k].split(' (')[0]} {runs[k]['accuracy_test']:.4f} "
                       f"{'=' if v else '≠'} {runs[k]['reference_accuracy_test']:.4f}"
                       for k, v in figures["accuracy_equal"].items())
    lines += ["", f"Same task: the in-memory floor's final pooled test accuracy is {reference:.4f} (after every round "
              f"in peers.json); each run's equals the floor's after as many rounds: {checks}."]
    if figures.get("notes"):
        lines += ["", *[f"- {note}" for note in figures["notes"]]]
    return "\n".join(lines) + "\n"


def readme_table(figures: Mapping[str, Any]) -> str:
    """The short table for the README's benchmark section: the five runs and the four targets."""
    runs = figures["runs"]
    demo = runs.get("fedgrove_demo") or {}
    before, after = figures["load_average_before"][0], figures["load_average_after"][0]
    lines = [f"{figures['sites']} organisations × {figures['rounds']} rounds of the demo's task, one `make bench` "
             f"({figures['date'][:10]}, {figures['machine']['cores']} cores; load average {before:.1f} before"
             + (", under load" if before > 1.0 else "") + f" and {after:.1f} after, the benchmark's own runs):",
             "",
             "| | whole run | per round, steady | peak memory, all processes | demo ÷ this (whole / round) |",
             "|---|---|---|---|---|"]
    for key in ("fedgrove_demo", "prefect_floor", "inmemory_floor", "flower_simulation", "flower_deployment",
                "fedgrove_sites"):
        run = runs.get(key)
        if run is None:
            continue
        label = LABELS[key].split(" (")[0]
        if key == "flower_deployment" and run["rounds_done"] != figures["rounds"]:
            label += f" (first {run['rounds_done']} rounds)"
        per_round = f"{run['per_round_s'] * 1000:.1f} ms" if run.get("per_round_s") is not None else "—"
        peak = f"{run['peak_mb']:.0f} MB" if run.get("peak_mb") is not None else "—"
        shares = " / ".join(_cell(_ratio(demo.get(name), run.get(name)), 2) for name in ("wall_s", "per_round_s"))
        lines.append(f"| {label} | {run['wall_s']:.1f} s | {per_round} | {peak} | "
                     f"{'—' if key == 'fedgrove_demo' else shares} |")
    lines += ["", "| target | figure | |", "|---|---|---|"]
    lines += [f"| {name} | {target['figure']} | {verdict(target['met'])} |"
              for name, target in figures["targets"].items()]
    paired = pairs_sentence(runs)
    lines += ["", *([paired, ""] if paired else []),
              "Full figures: `bench/results/peers.md`; how to run them: `docs/benchmarks.md`."]
    return "\n".join(lines) + "\n"


def write(figures: Mapping[str, Any]) -> str:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(figures, indent=2))
    text = markdown(figures)
    (RESULTS / "peers.md").write_text(text)
    (RESULTS / "README-table.md").write_text(readme_table(figures))
    return text
