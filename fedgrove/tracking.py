"""Metrics to AskAnna: `askanna.track_metrics` once per round, labelled with the epoch and the leaf.

Outside an AskAnna run the SDK writes them to a local JSON file; inside one (AA_RUN_SUUID set) they are
pushed to the platform at exit. Never pass a secret here: metrics are shown to everyone in the project.
"""

from __future__ import annotations

import threading

from fedgrove.simulation import EpochMetrics

_lock = threading.Lock()


def track_round(metrics: EpochMetrics, *, leaf_name: str) -> None:
    import askanna  # imported late: it reads the nearest .env and configures itself on import

    values = {
        "accuracy": metrics.accuracy,
        "loss": metrics.loss,
        "accuracy_test": metrics.accuracy_test,
        "loss_test": metrics.loss_test,
    }
    with _lock:  # the SDK rewrites one JSON file per call; leaves in threads share it
        askanna.track_metrics(values, label={"epoch": metrics.epoch, "leaf": leaf_name})
