"""Flower's simulation mode on fedgrove's demo task: one process, Ray's backend, one virtual client per site.

    bench/peers/.venv-flower/bin/python bench/peers/flower_simulation.py TASK_DIR RESULT_FILE [--cpus-per-client 2] [--ray-temp-dir DIR]

Runs in Flower's own venv (never the project's), started by `bench/peers/run.py` as a fresh process whose
whole tree it samples. Why it exists: `flwr.simulation.run_simulation` is Flower's in-process way to run a
ServerApp against N virtual SuperNodes; it needs no SuperLink, so what it measures is Flower's simulation
engine itself (Ray's start, its actors, the message plumbing) on the same task. Ray is kept on loopback, with
no dashboard and no usage reporting (run.py also sets RAY_USAGE_STATS_ENABLED=0 and Flower's telemetry off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

APP_DIR = Path(__file__).with_name("flower_app")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task_dir", type=Path)
    parser.add_argument("result_file", type=Path)
    parser.add_argument("--cpus-per-client", type=float, default=2.0,
                        help="Ray CPUs per virtual client (default: Flower's own default, 2)")
    parser.add_argument("--ray-temp-dir", type=Path, default=None, help="Ray's session folder (default: Ray's)")
    arguments = parser.parse_args()
    os.environ["FEDGROVE_PEERS_TASK"] = str(arguments.task_dir.resolve())
    os.environ["FEDGROVE_PEERS_RESULT"] = str(arguments.result_file.resolve())
    sys.path.insert(0, str(APP_DIR))

    from flwr.simulation import run_simulation

    from fedgrove_peers.client_app import app as client_app
    from fedgrove_peers.server_app import app as server_app

    sites = len(json.loads((arguments.task_dir / "task.json").read_text())["sites"])
    backend_config = {
        "client_resources": {"num_cpus": arguments.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "_node_ip_address": "127.0.0.1",
                      "num_cpus": os.cpu_count() or 1, "num_gpus": 0},
    }
    if arguments.ray_temp_dir is not None:
        backend_config["init_args"]["_temp_dir"] = str(arguments.ray_temp_dir.resolve())
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=sites, backend_name="ray",
                   backend_config=backend_config)
    if not arguments.result_file.exists():
        raise SystemExit("the ServerApp wrote no result: the simulation failed (see the log above)")


if __name__ == "__main__":
    main()
