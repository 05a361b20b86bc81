"""The ClientApp: one site of fedgrove's demo task (its partition-id is its position in the task's roster).

Why this module exists: Flower's side of the peers benchmark must do at a site what fedgrove's leaf does in a
round: train from the global parameters (`task.fit`) and report the training records as FedAvg's weight, then
measure the new global model on the site's own test records (`task.correct_on_test`).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgrove_peers.task import TASK_ENV, fit, correct_on_test, load_site, load_task, setting

app = ClientApp()


def _site(context: Context):  # type: ignore[no-untyped-def]
    task_dir = setting(context.run_config, "task-dir", TASK_ENV)
    return task_dir, load_task(task_dir), load_site(task_dir, int(context.node_config["partition-id"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    _, task, site = _site(context)
    parameters = msg.content["arrays"].to_numpy_ndarrays()
    server_round = int(msg.content["config"]["server-round"])
    trained = fit(parameters, site, task, server_round)
    content = RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": len(site.X)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, task, site = _site(context)
    correct = correct_on_test(msg.content["arrays"].to_numpy_ndarrays(), site, task)
    metrics = MetricRecord({"num-examples": len(site.y_test), "correct": correct})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
