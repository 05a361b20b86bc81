"""The peers benchmark's table, verdicts and files: `bench/results/peers.{json,md}`.

Why this module exists: the figures of one invocation (fedgrove and its peers, measured one after the other
on the same machine) become the ratios fedgrove / Flower and the issue's targets, each PASS or MISS with the
figure behind it; no figure is ever taken from an earlier run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
MEMORY_TARGET_MB = 1024.0
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


def verdicts(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's targets: the demo's whole run ≤ Flower's simulation's; the demo's peak ≤ 1 GB; sites mode's
    round ≤ 1/5 of Flower's deployment round (only where both were measured)."""
    demo, simulation = runs.get("fedgrove_demo"), runs.get("flower_simulation")
    deployment, sites = runs.get("flower_deployment"), runs.get("fedgrove_sites")
    targets: dict[str, dict[str, Any]] = {}
    if demo and simulation:
        targets["demo_wall_not_slower_than_flower_simulation"] = {
            "figure": f"{demo['wall_s']:.1f} s vs {simulation['wall_s']:.1f} s",
            "met": demo["wall_s"] <= simulation["wall_s"]}
    if demo:
        targets["demo_peak_memory_at_most_1gb"] = {"figure": f"{demo['peak_mb']:.0f} MB",
                                                   "met": demo["peak_mb"] <= MEMORY_TARGET_MB}
    if sites and deployment and sites.get("per_round_s") and deployment.get("per_round_s"):
        targets["sites_round_at_most_a_fifth_of_flower_deployment"] = {
            "figure": f"{sites['per_round_s'] * 1000:.0f} ms vs {deployment['per_round_s'] * 1000:.0f} ms "
                      f"(target ≤ {deployment['per_round_s'] * SITES_ROUND_SHARE * 1000:.0f} ms)",
            "met": sites["per_round_s"] <= deployment["per_round_s"] * SITES_ROUND_SHARE}
    else:
        targets["sites_round_at_most_a_fifth_of_flower_deployment"] = {
            "figure": "not measured in this run" + ("" if sites else " (fedgrove sites mode not run)"), "met": None}
    return targets


def ratios(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    demo, simulation = runs.get("fedgrove_demo") or {}, runs.get("flower_simulation") or {}
    deployment, sites = runs.get("flower_deployment") or {}, runs.get("fedgrove_sites") or {}
    return {
        "demo_over_simulation_wall": _ratio(demo.get("wall_s"), simulation.get("wall_s")),
        "demo_over_simulation_per_round": _ratio(demo.get("per_round_s"), simulation.get("per_round_s")),
        "demo_over_simulation_peak_memory": _ratio(demo.get("peak_mb"), simulation.get("peak_mb")),
        "demo_over_deployment_per_round": _ratio(demo.get("per_round_s"), deployment.get("per_round_s")),
        "sites_over_deployment_per_round": _ratio(sites.get("per_round_s"), deployment.get("per_round_s")),
        "sites_over_deployment_wall": _ratio(sites.get("wall_s"), deployment.get("wall_s")),
    }


LABELS = {
    "flower_simulation": "Flower 1.41 simulation (Ray, run_simulation)",
    "flower_deployment": "Flower 1.41 deployment (SuperLink + SuperNodes, flwr run)",
    "fedgrove_demo": "fedgrove demo (local, `fedgrove demo`)",
    "fedgrove_sites": "fedgrove sites mode (prefect server, a worker per site)",
}


def markdown(figures: Mapping[str, Any]) -> str:
    runs, reference = figures["runs"], figures["reference_accuracy_test"]
    header = (f"Peers: the demo's task ({figures['sites']} sites × {figures['rounds']} rounds) — {figures['date']}, "
              f"{figures['machine']['cores']} cores, {figures['machine']['memory_gb']} GB, load average "
              f"{figures['load_average_before'][0]:.1f} before / {figures['load_average_after'][0]:.1f} after")
    lines = [header, "",
             "| run | whole run (s) | first round (s) | per round, steady (ms) | rounds | peak memory, all "
             "processes (MB) | CPU, all processes (s) | final pooled test accuracy (reference) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        run = runs.get(key)
        if run is None:
            continue
        per_round = run["per_round_s"] * 1000 if run.get("per_round_s") is not None else None
        lines.append(f"| {label} | {_cell(run['wall_s'], 1)} | {_cell(run.get('first_round_s'))} | "
                     f"{_cell(per_round, 1)} | {run['rounds_done']} | {_cell(run['peak_mb'], 0)} | "
                     f"{_cell(run.get('cpu_s'), 0)} | {_cell(run.get('accuracy_test'), 4)} "
                     f"({_cell(run.get('reference_accuracy_test'), 4)}) | {run.get('note', '')} |")
    lines += ["", f"In-memory reference (`fedgrove.simulation.simulate`): final pooled test accuracy {reference:.4f} "
              "(after every round in peers.json); each run's accuracy equals the reference after as many rounds: " + ", ".join(f"{k} {v}" for k, v in figures["accuracy_equal"].items()), "",
              "| ratio fedgrove / Flower | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value, 3)} |" for name, value in figures["ratios"].items()]
    lines += ["", "| target (issue #21) | figure | verdict |", "|---|---|---|"]
    for name, target in figures["targets"].items():
        verdict = "not measured" if target["met"] is None else ("PASS" if target["met"] else "MISS")
        lines.append(f"| {name} | {target['figure']} | {verdict} |")
    if figures.get("notes"):
        lines += ["", *[f"- {note}" for note in figures["notes"]]]
    return "\n".join(lines) + "\n"


def write(figures: Mapping[str, Any]) -> str:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(figures, indent=2))
    text = markdown(figures)
    (RESULTS / "peers.md").write_text(text)
    return text
