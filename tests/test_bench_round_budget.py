"""The round-budget benchmark's arithmetic (bench/round_budget.py), on a made-up probe: no run, no clock.

Its table decides what the docs say the overhead target leaves for the pipeline, so each row is checked against
sums done by hand here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import round_budget  # noqa: E402


def probe(scale: float) -> dict:
    """A demo's probe: two round tasks per leaf thread plus a baseline and a coordinator task, `scale` rounds."""
    return {
        "process_cpu_s": 10.0 * scale + 4.0,
        "threads_cpu_s": {"GlobalEventLoopThread": 1.0 * scale, "EventsWorkerThread": 0.5 * scale,
                          "leaf_N": 7.0 * scale, "MainThread": 4.0},
        "cpu_s": {
            "task_run|fit-local|leaf_N": 3.0 * scale, "body|fit-local": 2.0 * scale,
            "task_run|upload-parameters|leaf_N": 2.5 * scale, "body|upload-parameters": 1.5 * scale,
            "task_run|train-alone|leaf_N": 0.5 * scale, "body|train-alone": 0.5 * scale,
            "task_run|write-outputs|MainThread": 1.0, "body|write-outputs": 1.0,
            "flow_run|leaf_N": 6.5 * scale, "flow_run|MainThread": 3.0,
            "client|file_upload|upload-parameters": 1.0 * scale, "client|file_upload|-": 9.0,
            "compute|fit|fit-local": 1.2 * scale, "compute|fit|train-alone": 0.4 * scale,
            "checkpoint|save_round|-": 0.2 * scale, "checkpoint|save_round|fit-local": 5.0,
        },
        "calls": {"task_run|fit-local|leaf_N": 10 * scale, "task_run|upload-parameters|leaf_N": 10 * scale},
    }


def test_each_component_is_the_hand_made_sum() -> None:
    parts = round_budget.components(probe(1.0), round_tasks=("fit-local", "upload-parameters"))
    assert parts == pytest.approx({
        "engine": (3.0 + 2.5) - (2.0 + 1.5),
        "bodies": 3.5,
        "client": 1.0,  # not the call outside any task run
        "compute": 1.2,  # not the baseline's
        "round_task_runs": 20.0,
        "leaf_flows_outside_task_runs": 6.5 - (3.0 + 2.5 + 0.5),  # the coordinator's flow is not a leaf's
        "checkpoint": 0.2,  # only outside task runs, as the leaf flow calls it
        "prefect_threads": 1.5,
        "baselines": 0.5,
        "process": 14.0,
        "rest": 14.0 - 5.5 - 0.5 - 1.5 - 0.5,
    })


def test_per_round_figures_are_the_difference_of_the_two_runs_over_the_rounds_between() -> None:
    long, short = (round_budget.components(probe(scale), round_tasks=("fit-local", "upload-parameters"))
                   for scale in (50.0, 10.0))
    per_round = round_budget.per_round(long, short, 40)
    # everything fixed (start-up, the coordinator's task, calls outside rounds) drops out
    assert per_round["process"] == pytest.approx(10.0) and per_round["client"] == pytest.approx(1.0)
    assert per_round["rest"] == pytest.approx(10.0 - 5.5 - 0.5 - 1.5 - 0.5)


def test_the_budget_is_the_target_at_the_process_share_of_a_core_and_names_what_the_design_fixes() -> None:
    demo = {"engine": 0.02, "bodies": 0.05, "client": 0.02, "compute": 0.015, "round_task_runs": 20.0,
            "leaf_flows_outside_task_runs": 0.01, "checkpoint": 0.007, "prefect_threads": 0.03,
            "baselines": 0.012, "process": 0.162, "rest": 0.005}
    floor = {"engine": 0.025, "bodies": 0.02, "client": 0.0, "compute": 0.0, "round_task_runs": 20.0,
             "leaf_flows_outside_task_runs": 0.001, "checkpoint": 0.0, "prefect_threads": 0.025,
             "baselines": 0.0, "process": 0.075, "rest": 0.004}
    figures = round_budget.budget(demo, floor, demo_round_s=0.2, floor_round_s=0.08, inmemory_round_s=0.007,
                                  sites=5)
    assert figures["demo_process_core_share"] == pytest.approx(150.0 / 200.0)  # rounds only: 162 − 12 ms
    assert figures["allowance_cpu_ms"] == pytest.approx(0.75 * 30.0)
    assert figures["overhead_ms"] == pytest.approx(200.0 - 7.0 - 80.0)
    assert figures["extra_cpu_ms"] == pytest.approx(150.0 - 75.0)
    # Prefect's part of a body: the floor's empty body per task run (1 ms), for as many task runs
    assert figures["ms_per_round"]["demo"]["prefect_in_bodies"] == pytest.approx(20.0)
    assert figures["ms_per_round"]["demo"]["own_in_bodies"] == pytest.approx(50.0 - 20.0 - 20.0 - 15.0)
    assert figures["fixed_cpu_ms"] == pytest.approx(20.0 + 7.0 + (15.0 - 7.0))
    lines = "\n".join(round_budget.markdown({**figures, "date": "2026-12-07T00:00:00+00:00", "rounds": 50,
                                             "machine": {"cores": 2}, "load_average_before": [0.5, 0.5, 0.5],
                                             "cpu_rounds": "11-50"}))
    assert "| **the process, rounds only** | 75.0 | 150.0 | +75.0 |" in lines
    assert "take 35.0 ms: 1.56 of the allowance" in lines
