"""The ServerApp: Flower's FedAvg over every site for the task's rounds, timed, and the final pooled accuracy.

Why this module exists: the peers benchmark needs Flower's own server loop (its `FedAvg` strategy, weighted
by the clients' `num-examples`, every node sampled for training and evaluation each round) on fedgrove's
task, and from inside it the time of each round and the final model's accuracy on every site's test
records pooled (right answers summed over the sites ÷ test records summed), which fedgrove's reference must
equal. It writes them as JSON to the result file
(the round boundaries as they pass, the accuracy and parameters at the end).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedgrove_peers.task import RESULT_ENV, TASK_ENV, initial_parameters, load_task, setting

app = ServerApp()


def pooled_correct(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Sums, not a weighted mean: the pooled accuracy is exactly correct ÷ records, as fedgrove pools it."""
    correct = records = 0
    for reply in replies:
        metrics = next(iter(reply.metric_records.values()))
        correct += int(metrics["correct"])
        records += int(metrics[weighted_by_key])
    return MetricRecord({"correct": correct, "records": records, "accuracy": correct / records})


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.time()
    task_dir = setting(context.run_config, "task-dir", TASK_ENV)
    result_file = Path(setting(context.run_config, "result-file", RESULT_ENV))
    task = load_task(task_dir)
    sites = len(task["sites"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=sites,
                      min_evaluate_nodes=sites, min_available_nodes=sites,
                      evaluate_metrics_aggr_fn=pooled_correct)
    marks: list[float] = []

    def mark_round(server_round: int, arrays: ArrayRecord) -> None:
        """Called before round 1 and after every round's training and evaluation: the round boundaries, written
        at once, so a run stopped by the benchmark's time limit still tells how long its rounds took."""
        marks.append(time.time())
        result_file.write_text(json.dumps({"serverapp_started": started, "round_marks": marks}))

    rounds = int(context.run_config.get("num-rounds") or task["train"]["rounds"])
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_parameters(task_dir)),
                            num_rounds=rounds, evaluate_fn=mark_round)
    final = result.evaluate_metrics_clientapp[rounds]
    result_file.write_text(json.dumps({
        "serverapp_started": started,
        "round_marks": marks,
        "rounds": rounds,
        "pooled_correct_test": int(final["correct"]),
        "pooled_records_test": int(final["records"]),
        "pooled_accuracy_test": float(final["accuracy"]),
        "parameters": [a.astype(float).ravel().tolist() for a in result.arrays.to_numpy_ndarrays()],
    }))
