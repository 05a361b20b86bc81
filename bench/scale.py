"""Scale: 5 sites x 100,000 records x 30 columns (5 of them categorical) through federated preprocessing and
10 rounds, with `fedgrove train` as a user runs it (Prefect's temporary server, the embedded aggregator, the
official client, every site's leaf in one process).

    python bench/scale.py [--records 100000] [--rounds 10]

The table is synthetic and seeded: 25 numeric columns (2% of cells empty), 5 categorical ones with 3 to 40
categories each (some rarer than the 5-record threshold, 1% empty), and a binary label from a logistic model
of a few of them; each site's table is a Parquet file. Reported: peak memory across every process of the
run (sampled every 50 ms), the whole command's wall time, preprocessing's time (reading the table and
agreeing the preprocessing, the slowest site) and the median time per round. Target: peak memory <= 1.5 GB.
Writes bench/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import yaml

RESULTS = Path(__file__).parent / "results"
SITES, NUMERIC, CATEGORICAL = 5, 25, 5
TARGET_PEAK_MB = 1536.0


def site_table(records: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for j in range(NUMERIC):
        values = rng.normal(loc=j, scale=1 + j % 3, size=records)
        values[rng.random(records) < 0.02] = np.nan
        columns[f"x{j:02d}"] = values
    for j in range(CATEGORICAL):
        kinds = 3 + 9 * j
        weights = 1.0 / np.arange(1, kinds + 1) ** 1.5
        values = rng.choice([f"c{j}-{k}" for k in range(kinds)], p=weights / weights.sum(), size=records)
        values = values.astype(object)
        values[rng.random(records) < 0.01] = None
        columns[f"category_{j}"] = values
    frame = pd.DataFrame(columns)
    logit = 0.8 * np.nan_to_num(frame["x00"]) - 0.5 * np.nan_to_num(frame["x03"] - 3) \
        + (frame["category_1"] == "c1-0").to_numpy() - 1.0
    frame["outcome"] = np.where(rng.random(records) < 1 / (1 + np.exp(-logit)), "event", "none")
    return frame


def tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedgrove-scale-") as folder:
        root = Path(folder)
        sites = {}
        for index in range(1, SITES + 1):
            path = root / f"site-{index}.parquet"
            site_table(arguments.records, seed=index).to_parquet(path, index=False)
            sites[f"site-{index}"] = {"data": str(path)}
        spec = {"target": "outcome", "select": {"k": 10}, "train": {"rounds": arguments.rounds, "batch_size": 256},
                "sites": sites}
        (root / "fedgrove.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, "FEDGROVE_WORK_DIR": str(root / "work"), "PREFECT_HOME": str(root / "prefect-home"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        command = [str(Path(sys.executable).with_name("fedgrove")), "train", "--spec", str(root / "fedgrove.yaml"),
                   "--out", str(root / "runs"), "--run-id", "scale"]
        started = time.perf_counter()
        process = psutil.Popen(command, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak, stop = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_rss(process))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, stderr = process.communicate(timeout=3600)
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        if process.returncode != 0:
            raise SystemExit(f"fedgrove train failed ({process.returncode}):\n{stderr.decode()[-3000:]}")
        summary = json.loads((root / "runs" / "scale" / "summary.json").read_text())
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "sites": SITES, "records_per_site": arguments.records, "columns": NUMERIC + CATEGORICAL,
        "categorical_columns": CATEGORICAL, "rounds": arguments.rounds,
        "peak_memory_mb": round(peak / 2**20),
        "wall_s": round(wall, 1),
        "flow_wall_s": summary["wall_s"],
        "preprocessing_s": round(summary["preprocessing_s"], 1),
        "per_round_s": round(summary["seconds_per_round"], 2),
        "federated_accuracy_test": summary["federated_pooled"]["accuracy_test"],
        "centralised_accuracy_test": summary["centralised"]["accuracy_test"],
    }
    figures["peak_memory_pass"] = figures["peak_memory_mb"] <= TARGET_PEAK_MB
    lines = [
        f"Scale: {SITES} sites x {arguments.records:,} records x {NUMERIC + CATEGORICAL} columns "
        f"({CATEGORICAL} categorical), {arguments.rounds} rounds, `fedgrove train` ({figures['date']})",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| peak memory, every process (MB) | {figures['peak_memory_mb']} | ≤ {TARGET_PEAK_MB:g} "
        f"({'PASS' if figures['peak_memory_pass'] else 'MISS'}) |",
        f"| whole command, wall (s) | {figures['wall_s']} | |",
        f"| preprocessing: read + agree, slowest site (s) | {figures['preprocessing_s']} | |",
        f"| per round, median (s) | {figures['per_round_s']} | |",
        f"| pooled test accuracy: federated / centralised | {figures['federated_accuracy_test']:.4f} / "
        f"{figures['centralised_accuracy_test']:.4f} | |",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
