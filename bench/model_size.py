"""What a bigger model costs per round beyond its own training: the demo's logistic model (5 parameters) against
a 100k-parameter MLP, both through `fedgrove train` in the same run.

    python bench/model_size.py [--rounds 20] [--sites 5]

Both federations read the demo's site files (breast cancer, 5 sites). The logistic one is the demo's spec (4
LRT-selected inputs); the MLP reads all 30 inputs through hidden layers [300, 300] (100,201 parameters). Each
runs as a user runs it (`fedgrove train --spec`: Prefect's temporary server, the embedded aggregator, the
official client), and each also runs in memory (`fedgrove.simulation`: the same local fits and FedAvg, no
servers). A round's overhead is the pipeline's median time per round minus the in-memory time per round, so
the model's own training compute drops out. Target (issue 18): the MLP's overhead no more than the logistic
model's. Writes bench/results/model_size.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import publish  # noqa: E402
from bench.end_to_end import simulated_timings, warm_prefect_home  # noqa: E402
from fedgrove.demo import DemoOptions, demo_spec, write_demo_sites  # noqa: E402
from fedgrove.site_table import table_for_spec  # noqa: E402
from fedgrove.sources import read_source  # noqa: E402
from fedgrove.spec import FederationSpec, ModelSpec  # noqa: E402

HIDDEN = [300, 300]


def specs(data: dict[str, Path], rounds: int) -> dict[str, FederationSpec]:
    logistic = demo_spec(data, DemoOptions(rounds=rounds))
    mlp = logistic.model_copy(update={"select": None, "model": ModelSpec(kind="mlp", hidden=HIDDEN)})
    return {"logistic (demo, 4 inputs)": logistic, f"MLP {HIDDEN} (30 inputs)": mlp}


def parameter_count(spec: FederationSpec, n_inputs: int) -> int:
    from fedgrove.model import build_model

    model = build_model(n_inputs, 1, seed=0, spec=spec.model)
    return sum(p.numel() for p in model.parameters())


def pipeline_per_round(spec: FederationSpec, name: str, workdir: Path) -> tuple[float, float]:
    """`fedgrove train --spec` in a fresh process: its median seconds per round and its whole wall time."""
    spec_file = workdir / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    env = {**os.environ, "FEDGROVE_WORK_DIR": str(workdir / "work"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_HOME": str(workdir / "prefect-home")}
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("fedgrove")), "train", "--spec", str(spec_file),
                           "--run-id", name, "--out", str(workdir / "runs")],
                          env=env, capture_output=True, text=True, cwd=workdir, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fedgrove train failed for {name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((workdir / "runs" / name / "summary.json").read_text())
    return summary["seconds_per_round"], wall


def memory_per_round(spec: FederationSpec) -> float:
    """The in-memory federation's time per round (rounds minus one round, so the preprocessing drops out)."""
    tables = {site: table_for_spec(read_source(source), spec, site) for site, source in spec.sites.items()}
    return simulated_timings(spec, tables)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sites", type=int, default=5)
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedgrove-model-size-") as folder:
        workdir = Path(folder)
        warm_prefect_home(workdir / "prefect-home")
        paths = write_demo_sites(workdir / "data", DemoOptions(sites=arguments.sites, rounds=arguments.rounds),
                                 min_records=10)
        for index, (name, spec) in enumerate(specs(paths, arguments.rounds).items()):
            per_round, wall = pipeline_per_round(spec, f"model-{index}", workdir)
            in_memory = memory_per_round(spec)
            inputs = 4 if spec.select is not None else 30
            rows.append({"model": name, "parameters": parameter_count(spec, inputs), "whole_s": round(wall, 1),
                         "pipeline_per_round_ms": round(per_round * 1000, 1),
                         "in_memory_per_round_ms": round(in_memory * 1000, 1),
                         "overhead_ms": round((per_round - in_memory) * 1000, 1)})
    small, big = rows
    met = big["overhead_ms"] <= small["overhead_ms"]
    figures = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
               "sites": arguments.sites, "rounds": arguments.rounds, "rows": rows,
               "target": "MLP overhead per round <= logistic overhead per round", "met": met}
    lines = [
        f"Model size, {arguments.sites} sites × {arguments.rounds} rounds through `fedgrove train` — {figures['date']}, "
        f"{figures['cores']} cores",
        "",
        "| model | parameters | whole run (s) | per round (ms) | in memory per round (ms) | overhead per round (ms) |",
        "|---|---|---|---|---|---|",
        *[f"| {r['model']} | {r['parameters']:,} | {r['whole_s']} | {r['pipeline_per_round_ms']} | "
          f"{r['in_memory_per_round_ms']} | {r['overhead_ms']} |" for r in rows],
        "",
        f"Target: the MLP's overhead ≤ the logistic model's: {big['overhead_ms']} ms vs {small['overhead_ms']} ms: "
        f"{'PASS' if met else 'MISS'}",
    ]
    publish("model_size", figures, lines)


if __name__ == "__main__":
    main()
