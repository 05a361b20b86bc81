"""Privacy: what it costs in accuracy (against ε), and what secure aggregation costs in time and bytes.

    python bench/privacy.py [--seeds 3] [--rounds 20]

The privacy–utility table: the breast-cancer demo and anes96 (from statsmodels), 5 sites, seeds 0..n-1, the
federation in memory (`fedgrove.simulation`, which runs the leaves' own protocol, masking included):
pooled test accuracy and the ε spent (δ = 1e-5) for noise multipliers 0.5, 1, 2 and 4, at site level (with
secure aggregation: each site adds σC/√n, the sum carries σC) and at record level (DP-SGD through Opacus),
beside the run without privacy. The cost table: masking and unmasking one round's upload (per site) and the
upload's size as the official client writes it (`np.savez_compressed`), for the demo's model and for a
1e6-parameter one, against the same upload without masking.
Writes bench/results/privacy.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgrove.run_summary import build_summary  # noqa: E402
from fedgrove.secure_aggregation import make_keys, mask_upload, pair_secrets, unmask_aggregate  # noqa: E402
from fedgrove.simulation import simulate  # noqa: E402
from fedgrove_common.fedavg import weighted_mean  # noqa: E402
from tests.data_sets import anes96, breast_cancer, site_tables, spec_for  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SITES = 5
MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)
DATA_SETS = {
    "breast cancer (demo)": (breast_cancer, {"target": "diagnosis", "select": {"k": 4}}),
    "anes96": (anes96, {"target": "vote", "categorical": ["PID", "educ"]}),
}


def accuracy_and_epsilon(load, keys: dict, privacy: dict | None, seed: int, rounds: int) -> tuple[float, float | None]:  # type: ignore[no-untyped-def]
    spec = spec_for(keys["target"], sites=SITES, **{k: v for k, v in keys.items() if k != "target"},
                    train={"rounds": rounds, "seed": seed, "learning_rate": 0.3},
                    **({"privacy": privacy} if privacy else {}))
    simulation = simulate(spec, site_tables(load(), spec, seed=seed), baselines=False, centralised=False)
    summary = build_summary(run_id="privacy", spec=spec, mode="local", results=simulation.results,
                            centralised=None, failures={})
    return summary["federated_pooled"]["accuracy_test"], summary["privacy"]["epsilon"]


def utility_rows(seeds: int, rounds: int) -> tuple[list[str], dict]:
    rows, results = [], {}
    for name, (load, keys) in DATA_SETS.items():
        settings: list[tuple[str, float | None, dict | None]] = [("none", None, None)]
        settings += [("site + secure aggregation", sigma, {"secure_aggregation": True,
                      "dp": {"level": "site", "noise_multiplier": sigma, "clip_norm": 1.0}}) for sigma in MULTIPLIERS]
        settings += [("record (DP-SGD)", sigma, {"dp": {"level": "record", "noise_multiplier": sigma,
                                                        "clip_norm": 1.0}}) for sigma in MULTIPLIERS]
        for level, sigma, privacy in settings:
            runs = [accuracy_and_epsilon(load, keys, privacy, seed, rounds) for seed in range(seeds)]
            accuracy = float(np.mean([a for a, _ in runs]))
            spent = runs[0][1]
            results[f"{name} / {level} / {sigma}"] = {"accuracy": accuracy, "epsilon": spent}
            rows.append(f"| {name} | {level} | {'-' if sigma is None else sigma} | "
                        f"{'-' if spent is None else f'{spent:.2f}'} | {accuracy:.3f} |")
            print(rows[-1], flush=True)
    return rows, results


def cost_rows() -> tuple[list[str], dict]:
    roster = [f"site-{i}" for i in range(1, SITES + 1)]
    keys = {site: make_keys(site) for site in roster}
    public = {site: k.public for site, k in keys.items()}
    secrets = {site: pair_secrets(keys[site], public, run_id="bench") for site in roster}
    rng = np.random.default_rng(0)
    rows, results = [], {}
    for label, shapes in (("demo: logistic, 5 parameters", [(1, 4), (1,)]),
                          ("1e6 parameters", [(1000, 1000)])):
        layers = {site: [rng.normal(size=shape).astype(np.float32) for shape in shapes] for site in roster}
        started = time.perf_counter()
        masked = {site: mask_upload(layers[site], 100.0, site=site, roster=roster, secrets=secrets[site],
                                    run_id="bench", round_number=1) for site in roster}
        mask_s = (time.perf_counter() - started) / SITES
        mean = weighted_mean([(masked[site], 1.0) for site in roster])
        started = time.perf_counter()
        unmask_aggregate(mean, shapes_dtypes=[(shape, np.dtype(np.float32)) for shape in shapes], sites=SITES,
                         run_id="bench", round_number=1)
        unmask_s = time.perf_counter() - started
        plain_bytes, masked_bytes = (_npz_bytes(arrays) for arrays in (layers[roster[0]], masked[roster[0]]))
        results[label] = {"mask_ms": mask_s * 1000, "unmask_ms": unmask_s * 1000, "plain_bytes": plain_bytes,
                          "masked_bytes": masked_bytes}
        rows.append(f"| {label} | {mask_s * 1000:.2f} | {unmask_s * 1000:.2f} | {plain_bytes:,} | {masked_bytes:,} "
                    f"| {masked_bytes / plain_bytes:.1f} |")
        print(rows[-1], flush=True)
    return rows, results


def _npz_bytes(arrays: list[np.ndarray]) -> int:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, weighting=np.array([1.0]), **{f"layer_{i}": a for i, a in enumerate(arrays)})
    return buffer.getbuffer().nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    arguments = parser.parse_args()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    utility, utility_results = utility_rows(arguments.seeds, arguments.rounds)
    cost, cost_results = cost_rows()
    lines = [
        f"Pooled test accuracy after {arguments.rounds} rounds, {SITES} sites, mean over seeds "
        f"0-{arguments.seeds - 1}; ε at δ = 1e-5 after those rounds (RDP accountant); clip norm 1.0 ({date}).",
        "",
        "| data set | DP | noise multiplier σ | ε | test accuracy |",
        "|---|---|---|---|---|",
        *utility,
        "",
        f"Secure aggregation's cost per round, {SITES} sites: masking one site's upload, unmasking the aggregate, "
        "and the upload's size as the official client writes it (compressed npz).",
        "",
        "| model | mask (ms per site) | unmask (ms) | upload bytes, plain | masked | ratio |",
        "|---|---|---|---|---|---|",
        *cost,
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "privacy.json").write_text(json.dumps({"date": date, "rounds": arguments.rounds, "sites": SITES,
                                                      "utility": utility_results, "cost": cost_results},
                                                     indent=2) + "\n")
    (RESULTS / "privacy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
