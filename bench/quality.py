"""Model quality: the federation vs each site alone vs the centralised model, per data set and split.

    python bench/quality.py [--seeds 3] [--rounds 50]

Each data set ships inside an installed package (nothing is downloaded); each is split over 5 sites (iid, and
Dirichlet(0.5) label skew), each site holds out its own 20% for testing, and the spec's federation runs in
memory (`fedgrove.simulation`): the tests show the real pipeline (server, official client, Prefect) gives
the same numbers to 1e-5. Reported per data set and split, as means over the seeds: the pooled federated
test accuracy (every site's test records together), the centralised model's on the same records, each site
alone on its own test records (mean and best), and the verdict: federated at most 1 point below centralised.
Writes bench/results/quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgrove.run_summary import build_summary  # noqa: E402
from fedgrove.simulation import simulate  # noqa: E402
from tests.data_sets import affairs, anes96, breast_cancer, site_tables, spec_for  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SITES = 5
DATA_SETS = {
    "breast cancer (demo: 4 LRT features)": (breast_cancer, {"target": "diagnosis", "select": {"k": 4}}),
    "affairs (string categories, missing values)": (affairs, {"target": "affair", "exclude": ["patient_id"]}),
    "anes96 (codes as categories)": (anes96, {"target": "vote", "categorical": ["PID", "educ"]}),
}
SPLITS = ("iid", "dirichlet")
TOLERANCE = 0.01


def one_run(load, keys: dict, split: str, seed: int, rounds: int) -> dict:  # type: ignore[no-untyped-def]
    spec = spec_for(keys["target"], sites=SITES, **{k: v for k, v in keys.items() if k != "target"},
                    train={"rounds": rounds, "seed": seed})
    simulation = simulate(spec, site_tables(load(), spec, split=split, seed=seed))
    summary = build_summary(run_id="quality", spec=spec, mode="local", results=simulation.results,
                            centralised=simulation.centralised, failures={})
    alone = [site["alone"]["accuracy_test"] for site in summary["sites"].values()]
    return {
        "federated": summary["federated_pooled"]["accuracy_test"],
        "centralised": summary["centralised"]["accuracy_test"],
        "federated_auc": summary["federated_pooled"]["auc_test"],
        "alone_mean": float(np.mean(alone)),
        "alone_best": float(np.max(alone)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=50)
    arguments = parser.parse_args()
    rows, results = [], {}
    for name, (load, keys) in DATA_SETS.items():
        for split in SPLITS:
            runs = [one_run(load, keys, split, seed, arguments.rounds) for seed in range(arguments.seeds)]
            mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
            verdict = mean["federated"] >= mean["centralised"] - TOLERANCE
            results[f"{name} / {split}"] = {"runs": runs, "mean": mean, "pass": verdict}
            rows.append(f"| {name} | {split} | {mean['centralised']:.3f} | {mean['federated']:.3f} | "
                        f"{mean['federated_auc']:.3f} | {mean['alone_mean']:.3f} | {mean['alone_best']:.3f} | "
                        f"{'PASS' if verdict else 'MISS'} |")
            print(rows[-1], flush=True)
    date = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"Test accuracy after {arguments.rounds} rounds, {SITES} sites, means over seeds 0-{arguments.seeds - 1} "
        f"({date}); each site holds out 20% of its records; federated and centralised are measured on every "
        "site's test records together, alone on the site's own.",
        "",
        "| data set | split | centralised | federated | federated AUC | alone (mean) | alone (best) | "
        "federated ≥ centralised − 1 pt |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps({"date": date, "rounds": arguments.rounds, "sites": SITES,
                                                      "tolerance": TOLERANCE, "results": results}, indent=2) + "\n")
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
