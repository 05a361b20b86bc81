"""What a round costs a leaf before any of fedgrove's own code runs: the official client's CPU per call.

    python bench/client_floor.py [--rounds 200]

Five official `branchkey` clients (one per leaf) against the real aggregator on loopback (its own process,
branch target 5), for the demo's logistic model and the 100k-parameter MLP of `model_size.py`, one call at
a time from one thread. Each round: every leaf writes its archive (`fedgrove.weights_archive`) and calls
`file_upload`; the notification; every leaf calls `file_download` and loads the aggregate (`np.load`).
Timed after 20 warm-up rounds: the calling thread's CPU in each step
(`time.thread_time`), and the aggregator process's CPU per round. That is what a round spends moving
parameters whatever the pipeline around it does; in a local run the five leaves spend it in one process. It is a floor under the per-round targets of `end_to_end.py` (issue 21:
≤ 30 ms beyond Prefect's floor) and `model_size.py` (issue 18: the MLP's overhead ≤ the logistic model's).
Writes bench/results/client_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _aggregator_case import _close, _connect  # noqa: E402
from _aggregator_server import ServerProcess  # noqa: E402

from bench._results import publish  # noqa: E402
from bench.model_size import specs  # noqa: E402
from fedgrove.demo import DemoOptions, write_demo_sites  # noqa: E402
from fedgrove.model import build_model, get_parameters  # noqa: E402
from fedgrove.weights_archive import write_weights_archive  # noqa: E402

WARM_UP_ROUNDS = 20
NOTIFY_TIMEOUT_S = 60
BUDGET_MS = 30.0  # issue 21: the pipeline's per-round overhead beyond Prefect's floor


def client_cpu_per_round(parameters: list[np.ndarray], rounds: int, sites: int, work: Path) -> dict[str, float]:
    """Median CPU (ms) of the calling thread per leaf and round: writing the leaf's archive, `file_upload`,
    `file_download`, loading the aggregate (`np.load`, every layer); and the aggregator's CPU per round."""
    server = ServerProcess(work / "server", log_path=work / "server.log")
    (work / "server").mkdir(parents=True)
    clients = []
    timings: dict[str, list[float]] = {"write_ms": [], "upload_ms": [], "download_ms": [], "load_ms": []}
    with contextlib.redirect_stdout(io.StringIO()):  # the client prints a line per download
        try:
            server.start()
            branch = server.create_branch(tree="floor", branch="client", leaves=sites, target=sites)
            clients = _connect(server, branch["leaves"], work / "downloads")
            server.wait_connected(branch["branch_id"], sites)
            aggregator = psutil.Process(server.process.pid)  # type: ignore[union-attr]
            for round_number in range(WARM_UP_ROUNDS + rounds):
                if round_number == WARM_UP_ROUNDS:
                    server_cpu = sum(aggregator.cpu_times()[:2])
                for index, client in enumerate(clients):
                    # Every leaf's parameters differ from round to round, as in training: an archive repeating
                    # the leaf's last one would be checked as a resend (`aggregator/resends.py`), at a cost a
                    # real round does not pay.
                    layers = [layer + np.float32(round_number * 1e-3 + index * 1e-4) for layer in parameters]
                    started = time.thread_time()
                    archive = write_weights_archive(work / f"leaf-{index}-round-{round_number}", 100.0, layers)
                    written = time.thread_time()
                    client.file_upload(str(archive))
                    uploaded = time.thread_time()
                    archive.unlink()
                    if round_number >= WARM_UP_ROUNDS:
                        timings["write_ms"].append((written - started) * 1000)
                        timings["upload_ms"].append((uploaded - written) * 1000)
                aggregation_ids = {client.queue.get(timeout=NOTIFY_TIMEOUT_S) for client in clients}
                assert len(aggregation_ids) == 1, aggregation_ids
                for client in clients:
                    started = time.thread_time()
                    path = Path(client.file_download(next(iter(aggregation_ids))))
                    downloaded = time.thread_time()
                    with np.load(path, allow_pickle=False) as aggregate:
                        layers = [aggregate[name] for name in aggregate.files]
                    loaded = time.thread_time()
                    assert sum(layer.size for layer in layers) == sum(p.size for p in parameters)
                    path.unlink()
                    if round_number >= WARM_UP_ROUNDS:
                        timings["download_ms"].append((downloaded - started) * 1000)
                        timings["load_ms"].append((loaded - downloaded) * 1000)
            server_ms = (sum(aggregator.cpu_times()[:2]) - server_cpu) * 1000 / rounds
        finally:
            _close(clients)
            server.stop()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {**{name: round(value, 2) for name, value in medians.items()},
            "client_per_leaf_ms": round(medians["upload_ms"] + medians["download_ms"], 2),
            "payload_per_leaf_ms": round(sum(medians.values()), 2), "aggregator_per_round_ms": round(server_ms, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds of the client (after 20 warm-up)")
    parser.add_argument("--sites", type=int, default=5)
    arguments = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="fedgrove-client-floor-") as folder:
        work = Path(folder)
        paths = write_demo_sites(work / "data", DemoOptions(sites=arguments.sites, rounds=20), min_records=10)
        for index, (name, spec) in enumerate(specs(paths, 20).items()):
            inputs = 4 if spec.select is not None else 30
            parameters = get_parameters(build_model(inputs, 1, seed=0, spec=spec.model))
            client = client_cpu_per_round(parameters, arguments.rounds, arguments.sites, work / f"client-{index}")
            rows.append({"model": name, "parameters": int(sum(p.size for p in parameters)),
                         "archive_bytes": write_weights_archive(work / f"size-{index}", 1.0, parameters).stat().st_size,
                         **client, "client_per_round_ms": round(client["client_per_leaf_ms"] * arguments.sites, 1),
                         "payload_per_round_ms": round(client["payload_per_leaf_ms"] * arguments.sites, 1)})
    small, big = rows
    figures = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(),
               "sites": arguments.sites, "rounds": arguments.rounds, "load_before": load_before, "rows": rows,
               "budget_ms": BUDGET_MS}
    lines = [
        f"A leaf's parameters through the official client — {figures['date']}, {figures['cores']} cores, load "
        f"average {figures['load_before']:.2f} before: medians of {arguments.rounds} rounds against the aggregator on "
        "loopback",
        "",
        "| model | parameters | archive (bytes) | write archive | `file_upload` | `file_download` | load aggregate | "
        f"official client, {arguments.sites} leaves | all four, {arguments.sites} leaves | aggregator |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['model']} | {r['parameters']:,} | {r['archive_bytes']:,} | {r['write_ms']} | {r['upload_ms']} | "
          f"{r['download_ms']} | {r['load_ms']} | {r['client_per_round_ms']} | {r['payload_per_round_ms']} | "
          f"{r['aggregator_per_round_ms']} |"
          for r in rows],
        "",
        "CPU in ms: a leaf's calling thread per call; the last three columns per round of all leaves (the aggregator: its "
        "process, uploads, the aggregation and downloads).",
        "",
        f"The official client alone, {arguments.sites} leaves of the demo: {small['client_per_round_ms']} ms of CPU per "
        f"round, {small['client_per_round_ms'] / BUDGET_MS:.2f}× the {BUDGET_MS:g} ms the pipeline may add beyond "
        f"Prefect's floor. Moving the MLP's parameters instead of the logistic model's adds "
        f"{big['payload_per_round_ms'] - small['payload_per_round_ms']:.1f} ms of CPU per round of {arguments.sites} "
        f"leaves, and {big['aggregator_per_round_ms'] - small['aggregator_per_round_ms']:.1f} ms in the aggregator.",
    ]
    publish("client_floor", figures, lines)


if __name__ == "__main__":
    main()
