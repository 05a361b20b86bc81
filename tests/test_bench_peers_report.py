"""The peers benchmark's verdicts and tables (bench/peers/_report.py), on made-up figures: no run, no clock.

The verdict logic decides what the README claims, so it is checked here: each target's PASS or MISS follows its
figures, a target whose figures the benchmark did not measure is a MISS that says so, and the tables carry
every run and every target.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "peers"))

import _report  # noqa: E402


def run(wall_s: float, per_round_s: float | None, peak_mb: float | None, *, rounds: int = 50,
        accuracy: float | None = 0.9) -> dict:
    return {"wall_s": wall_s, "first_round_s": None, "per_round_s": per_round_s, "rounds_done": rounds,
            "peak_mb": peak_mb, "accuracy_test": accuracy, "reference_accuracy_test": accuracy, "note": ""}


RUNS = {
    "fedgrove_demo": run(20.0, 0.120, 800.0),
    "prefect_floor": run(15.0, 0.100, 600.0, accuracy=None),
    "inmemory_floor": run(0.5, 0.004, None, accuracy=None),
    "flower_simulation": run(21.0, 0.104, 2300.0),
    "flower_deployment": run(300.0, 20.0, 3000.0, rounds=10),
}


def figures(runs: dict) -> dict:
    return {"date": "2026-12-06T22:00:00+00:00", "machine": {"cores": 2, "memory_gb": 23.5, "python": "3.11"},
            "load_average_before": (3.0, 3.0, 3.0), "load_average_after": (2.0, 2.0, 2.0), "sites": 5,
            "rounds": 50, "reference_accuracy_test": 0.9, "runs": runs,
            "accuracy_equal": {k: True for k, r in runs.items() if r["accuracy_test"] is not None},
            "ratios": _report.ratios(runs), "targets": _report.verdicts(runs), "notes": []}


def test_verdicts_follow_the_figures_and_sites_mode_unmeasured_is_a_miss() -> None:
    targets = _report.verdicts(RUNS)
    met = [target["met"] for target in targets.values()]
    # 20 ≤ 21 s; 120 − 4 − 100 = 16 ≤ 30 ms; 800 MB ≤ 1 GB; sites mode not run
    assert met == [True, True, True, None]
    assert "16.0 ms" in list(targets.values())[1]["figure"]
    assert "not measured" in list(targets.values())[3]["figure"]
    assert _report.verdict(None) == "MISS (not measured)"


def test_a_slower_demo_and_a_larger_overhead_are_misses() -> None:
    runs = {**RUNS, "fedgrove_demo": run(30.0, 0.200, 1100.0)}
    assert [target["met"] for target in _report.verdicts(runs).values()] == [False, False, False, None]


def test_the_tables_name_every_run_and_target() -> None:
    made = figures(RUNS)
    full, short = _report.markdown(made), _report.readme_table(made)
    for label in ("fedgrove demo", "Prefect's own floor", "in-memory FedAvg floor", "Flower 1.41 simulation",
                  "Flower 1.41 deployment"):
        assert label in full and label in short
    assert "first 10 rounds" in short and "under load" in short
    assert short.count("PASS") == 3 and "MISS (not measured)" in short


def test_a_load_that_only_the_benchmarks_own_runs_raised_is_not_called_load() -> None:
    made = {**figures(RUNS), "load_average_before": (0.8, 1.0, 1.0), "load_average_after": (3.8, 2.0, 2.0)}
    full, short = _report.markdown(made), _report.readme_table(made)
    assert "under load" not in full and "under load" not in short
    assert "load average 0.8 before and 3.8 after, the benchmark's own runs" in short
    assert "load average 0.8 before / 3.8 after (the load after includes the benchmark's own runs)" in full


def test_runs_taken_in_turn_keep_their_median_run_and_every_whole_run_time_in_order() -> None:
    done = [run(24.0, 0.21, 800.0), run(21.5, 0.20, 810.0), run(26.0, 0.23, 790.0)]
    chosen = _report.median_run(done)
    assert (chosen["wall_s"], chosen["per_round_s"], chosen["peak_mb"]) == (24.0, 0.21, 800.0)
    assert chosen["whole_runs_s"] == [24.0, 21.5, 26.0]
    assert _report.median_run(done[:2])["wall_s"] == 21.5  # of an even count, the lower middle one


def test_the_readme_table_says_which_runs_took_turns_and_shows_every_one() -> None:
    runs = {**RUNS,
            "fedgrove_demo": _report.median_run([run(19.0, 0.2, 800.0), run(20.0, 0.2, 800.0), run(25.0, 0.2, 800.0)]),
            "flower_simulation": _report.median_run([run(24.6, 0.2, 1200.0), run(22.8, 0.2, 1200.0),
                                                     run(24.0, 0.2, 1200.0)])}
    short = _report.readme_table(figures(runs))
    assert ("Flower 1.41 simulation and fedgrove demo ran 3 times each, in turn; each row is its run with the "
            "median whole-run time (every run, in order: Flower 1.41 simulation: 24.6, 22.8, 24.0 s; fedgrove demo: "
            "19.0, 20.0, 25.0 s).") in short
    assert "| fedgrove demo | 20.0 s |" in short and "| Flower 1.41 simulation | 24.0 s |" in short
    assert "ran 3 times" not in _report.readme_table(figures(RUNS))


def test_the_overhead_of_runs_taken_in_turn_is_the_median_of_the_pairs_differences() -> None:
    # rounds in ms, pair by pair: demo 190, 180, 200; Prefect's floor 100, 70, 95; in-memory 4
    runs = {**RUNS,
            "fedgrove_demo": _report.median_run([run(20.0, 0.190, 800.0), run(19.0, 0.180, 800.0),
                                                 run(21.0, 0.200, 800.0)]),
            "prefect_floor": _report.median_run([run(11.0, 0.100, 400.0, accuracy=None),
                                                 run(10.0, 0.070, 400.0, accuracy=None),
                                                 run(12.0, 0.095, 400.0, accuracy=None)])}
    # differences 86, 106, 101: median 101 (the medians' difference would be 190 − 4 − 95 = 91)
    assert _report.paired_overheads_ms(runs) == [86.0, 106.0, 101.0]
    overhead = list(_report.verdicts(runs).values())[1]
    assert overhead == {"figure": "101.0 ms (median of 3 pairs, each the demo's round − 4.0 in-memory − Prefect's "
                                  "round, in ms: 190.0 − 100.0, 180.0 − 70.0, 200.0 − 95.0; so 86.0, 106.0, 101.0)",
                        "met": False}
    assert ("Flower 1.41 simulation, fedgrove demo and Prefect's own floor ran 3 times each"
            not in _report.readme_table(figures(runs)))  # Flower ran once here
    assert ("fedgrove demo and Prefect's own floor ran 3 times each, in turn; each row is its run with the median "
            "whole-run time (every run, in order: fedgrove demo: 20.0, 19.0, 21.0 s; Prefect's own floor: 11.0, "
            "10.0, 12.0 s).") in _report.readme_table(figures(runs))


def test_a_floor_run_fewer_times_than_the_demo_falls_back_to_the_single_difference() -> None:
    runs = {**RUNS, "fedgrove_demo": _report.median_run([run(20.0, 0.190, 800.0), run(19.0, 0.180, 800.0)])}
    assert _report.paired_overheads_ms(runs) == []
    # the median run (the lower middle of two: 19.0 s, 180 ms) − 4 − 100
    assert list(_report.verdicts(runs).values())[1]["figure"] == "76.0 ms (180.0 − 4.0 in-memory − 100.0 Prefect)"
