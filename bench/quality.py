"""Model quality of federation vs each organisation alone vs centralised, 5 organisations, 50 rounds, 5 seeds.

    python bench/quality.py

Uses the in-memory FedAvg loop, which `tests/test_federated_training_flow.py` shows gives the same metrics as
the real pipeline (server, official client, Prefect). Writes bench/results/quality.{json,md}: per split, the
mean final test accuracy of each arm and the rounds (epochs) each needs to come within 1 point of the
centralised model's final accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedgrove.data import TARGET_COLUMN, load_dataset, split_dataset
from fedgrove.features import select_features
from fedgrove.model import TrainConfig
from fedgrove.simulation import fedavg_in_memory, leaf_seed, train_alone

RESULTS = Path(__file__).parent / "results"
SEEDS, ROUNDS, ORGANISATIONS = range(5), 50, 5


def rounds_to_within(history: list, target: float) -> int | None:
    return next((m.epoch for m in history if m.accuracy_test >= target - 0.01), None)


def one_seed(split: str, seed: int) -> dict:
    test, partitions = split_dataset(load_dataset(), organisations=ORGANISATIONS, split=split, seed=seed)  # type: ignore[arg-type]
    import pandas as pd

    selection = select_features(pd.concat(partitions.values()), k=4)
    arrays = {org: (selection.transform(f), f[TARGET_COLUMN].to_numpy(np.float32)) for org, f in partitions.items()}
    X_test, y_test = selection.transform(test), test[TARGET_COLUMN].to_numpy(np.float32)
    config = TrainConfig()
    federated = fedavg_in_memory(arrays, X_test, y_test, rounds=ROUNDS, config=config, seed=seed)
    alone = {
        org: train_alone(X, y, X_test, y_test, epochs=ROUNDS, config=config, seed=leaf_seed(seed, org))
        for org, (X, y) in arrays.items()
    }
    X_all = np.concatenate([X for X, _ in arrays.values()])
    y_all = np.concatenate([y for _, y in arrays.values()])
    central = train_alone(X_all, y_all, X_test, y_test, epochs=ROUNDS, config=config, seed=seed)
    target = central[-1].accuracy_test
    fed_history = next(iter(federated.values()))  # every organisation holds the same aggregate
    return {
        "centralised": target,
        "federated": fed_history[-1].accuracy_test,
        "alone": {org: h[-1].accuracy_test for org, h in alone.items()},
        "federated_rounds_to_1pt": rounds_to_within(fed_history, target),
        "alone_epochs_to_1pt": {org: rounds_to_within(h, target) for org, h in alone.items()},
    }


def verdicts(results: dict) -> list[str]:
    """The issue's two quality criteria, each over the 5 seeds, and the per-seed count beside them.

    "Beats every organisation alone" per seed cannot be asked of federation when the centralised model, its
    upper bound, does not manage it either: on 114 test records one record is 0.88 points, and an organisation
    with a large, balanced partition can match or beat the pooled model on a given split. So the count of seeds
    on which the centralised model beats the best organisation alone is printed next to federation's."""
    iid, dirichlet = results["iid"].values(), results["dirichlet"].values()
    fed_iid = np.mean([r["federated"] for r in iid])
    central_iid = np.mean([r["centralised"] for r in iid])
    fed_dir = np.mean([r["federated"] for r in dirichlet])
    best_alone_dir = np.mean([max(r["alone"].values()) for r in dirichlet])
    fed_wins = sum(r["federated"] > max(r["alone"].values()) for r in dirichlet)
    central_wins = sum(r["centralised"] > max(r["alone"].values()) for r in dirichlet)
    iid_ok = abs(fed_iid - central_iid) <= 0.01
    dir_ok = fed_dir > best_alone_dir
    return [
        "**criteria, over the seeds**",
        "",
        f"- iid: mean federated test accuracy within 1 point of the centralised model: {fed_iid:.3f} vs "
        f"{central_iid:.3f} — {'PASS' if iid_ok else 'MISS'}",
        f"- dirichlet: mean federated test accuracy above the mean of the best organisation alone on each seed: "
        f"{fed_dir:.3f} vs {best_alone_dir:.3f} — {'PASS' if dir_ok else 'MISS'}",
        f"- dirichlet, seed by seed: federation beats the best organisation alone on {fed_wins} of {len(dirichlet)} "
        f"seeds; the centralised model (the upper bound) does on {central_wins} of {len(dirichlet)}",
        "",
    ]


def main() -> None:
    results = {split: {seed: one_seed(split, seed) for seed in SEEDS} for split in ("iid", "dirichlet")}
    lines = [f"Test accuracy after {ROUNDS} rounds, {ORGANISATIONS} organisations, seeds {list(SEEDS)} "
             "(alpha = 0.5 for dirichlet); 'to 1 pt' = first round within 1 point of the centralised final "
             "accuracy (— = never in 50).", ""]
    for split, seeds in results.items():
        lines += [f"**{split}**", "", "| seed | centralised | federated (to 1 pt) | each organisation alone (to 1 pt) |",
                  "|---|---|---|---|"]
        for seed, r in seeds.items():
            alone = " ".join(
                f"{r['alone'][o]:.3f} ({r['alone_epochs_to_1pt'][o] or '—'})" for o in sorted(r["alone"])
            )
            lines.append(f"| {seed} | {r['centralised']:.3f} | {r['federated']:.3f} "
                         f"({r['federated_rounds_to_1pt'] or '—'}) | {alone} |")
        mean = {k: np.mean([r[k] for r in seeds.values()]) for k in ("centralised", "federated")}
        best_alone = np.mean([max(r["alone"].values()) for r in seeds.values()])
        mean_alone = np.mean([np.mean(list(r["alone"].values())) for r in seeds.values()])
        lines += ["", f"mean: centralised {mean['centralised']:.3f}, federated {mean['federated']:.3f}, "
                  f"best organisation alone {best_alone:.3f}, average organisation alone {mean_alone:.3f}", ""]
    lines += verdicts(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
