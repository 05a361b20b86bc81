"""Exports the demo's task, as fedgrove prepares it, for a peer framework to train without fedgrove.

    python bench/peers/export_task.py OUT_DIR [--sites 5] [--rounds 50]

Runs in the project's venv. Why it exists: the peers benchmark must run *the same task* in Flower (whose venv
has no fedgrove), so everything fedgrove decides before training is computed here, by fedgrove itself, and
written down: the demo's split (`fedgrove.demo.write_demo_sites`), each site's own held-out 20%
(`fedgrove.site_table.table_for_spec`), the federated preprocessing (the same lockstep protocol
`fedgrove.simulation.simulate` drives) that selects and standardises 4 features, each site's shuffle seed, the
model's initial parameters and the training config. It also writes the reference the peer must equal: the
in-memory simulation's final pooled test accuracy and parameters (and its pooled accuracy after every
round, for a peer run stopped after fewer rounds).

OUT_DIR gets `task.json` (config, sites, seeds, features, reference) and per site `<site>.npz` (float32 `X`,
`y`, `X_test`, `y_test`), plus `initial.npz` (the initial parameters `layer_0`...`layer_n`, state_dict order).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from fedgrove.demo import DemoOptions, demo_spec, write_demo_sites
from fedgrove.federated_preprocessing import preprocessing_protocol
from fedgrove.lockstep import run_in_lockstep
from fedgrove.results import pooled_round
from fedgrove.simulation import simulate
from fedgrove.site_table import SiteTable, site_seed, table_for_spec
from fedgrove.site_training import initial_parameters, site_arrays
from fedgrove.sources import DataSource, read_source
from fedgrove.spec import FederationSpec

TASK_FILE = "task.json"
INITIAL_FILE = "initial.npz"


def demo_tables(folder: Path, options: DemoOptions) -> tuple[FederationSpec, dict[str, SiteTable]]:
    """The demo's spec over freshly written site files (as `fedgrove demo` writes them), and each site's table."""
    paths = write_demo_sites(folder, options, min_records=10)  # the demo's own call (tasks/run_setup.py)
    spec = demo_spec(paths, options)
    tables = {site: table_for_spec(read_source(DataSource(data=str(source.data))), spec, site)
              for site, source in spec.sites.items() if source is not None}
    return spec, tables


def export(out: Path, options: DemoOptions) -> dict:
    """Write the task and the reference to `out`; returns task.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedgrove-peers-data-") as folder:
        spec, tables = demo_tables(Path(folder), options)
    roster = spec.roster()
    agreed, _steps = run_in_lockstep(
        {site: preprocessing_protocol(spec=spec, site=site, table=tables[site]) for site in roster})
    preprocessing = agreed[roster[0]].preprocessing
    arrays = {site: site_arrays(tables[site], preprocessing) for site in roster}
    initial = initial_parameters(spec, len(preprocessing.input_names), arrays[roster[0]].n_outputs)
    np.savez(out / INITIAL_FILE, **{f"layer_{i}": p for i, p in enumerate(initial)})
    sites = []
    for site in roster:
        a = arrays[site]
        np.savez(out / f"{site}.npz", X=a.X.astype(np.float32), y=a.y.astype(np.float32),
                 X_test=a.X_test.astype(np.float32), y_test=a.y_test.astype(np.float32))
        sites.append({"name": site, "seed": site_seed(spec.train.seed, site), "records": a.records,
                      "test_records": len(a.y_test)})

    reference = simulate(spec, tables, baselines=False, centralised=False)
    pooled = pooled_round(reference.results, -1).test
    task = {
        "task": spec.task,
        "features": preprocessing.input_names,
        "model": {"kind": spec.model.kind, "n_inputs": len(preprocessing.input_names),
                  "n_outputs": arrays[roster[0]].n_outputs},
        "train": {"rounds": spec.train.rounds, "learning_rate": spec.train.learning_rate,
                  "batch_size": spec.train.batch_size, "local_epochs": spec.train.local_epochs,
                  "optimizer": spec.train.optimizer, "seed": spec.train.seed},
        "shuffle": "np.random.default_rng([site seed, round, local epoch]).permutation(records)",
        "fedavg_weight": "training records",
        "sites": sites,
        "reference": {
            "pooled_accuracy_test": pooled.get("accuracy"),
            "pooled_correct_test": pooled.sums["correct"],
            "pooled_records_test": pooled.records,
            # after each round, for a peer run of fewer rounds (the same task's first rounds)
            "pooled_accuracy_by_round": [pooled_round(reference.results, index).test.get("accuracy")
                                         for index in range(spec.train.rounds)],
            "parameters": [p.astype(np.float64).ravel().tolist() for p in reference.parameters],
        },
    }
    (out / TASK_FILE).write_text(json.dumps(task, indent=2))
    return task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sites", type=int, default=DemoOptions().sites)
    parser.add_argument("--rounds", type=int, default=DemoOptions().rounds)
    arguments = parser.parse_args()
    task = export(arguments.out, DemoOptions(sites=arguments.sites, rounds=arguments.rounds))
    print(json.dumps({"features": task["features"], "reference": task["reference"]["pooled_accuracy_test"]}))


if __name__ == "__main__":
    main()
