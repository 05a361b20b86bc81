"""`fedgrove`: the commands Prefect's own CLI does not cover — serve the aggregator, create branches and
leaves, change a branch's run status, run the demo, predict with a trained model, serve the weekly flow."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
aggregator_app = typer.Typer(no_args_is_help=True, help="The aggregation server.")
branch_app = typer.Typer(no_args_is_help=True, help="Trees, branches and leaves (the BranchKey dashboard's job).")
run_app = typer.Typer(no_args_is_help=True, help="Start, pause or stop a branch's run.")
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(branch_app, name="branch")
app.add_typer(run_app, name="run")
console = Console()

DEFAULT_HOST = "http://127.0.0.1:8080"
HostOption = Annotated[str, typer.Option(help="The aggregator's URL.", envvar="BRANCHKEY_HOST")]
DataDirOption = Annotated[
    Path, typer.Option(help="The aggregator's data folder (holds its admin token).", envvar="FEDGROVE_DATA_DIR")
]


class Split(str, Enum):
    iid = "iid"
    dirichlet = "dirichlet"


class Preprocessing(str, Enum):
    federated = "federated"
    pooled = "pooled"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _admin(host: str, data_dir: Path):  # type: ignore[no-untyped-def]
    from aggregator.admin_client import AdminApiError, AdminClient, admin_token_from

    try:
        token = admin_token_from(data_dir, os.environ.get("FEDGROVE_ADMIN_TOKEN"))
    except AdminApiError as exc:
        _fail(str(exc))
    return AdminClient(host, token)


@aggregator_app.command("serve")
def aggregator_serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    data_dir: DataDirOption = Path(".fedgrove"),
) -> None:
    """Serve the aggregator until SIGTERM or SIGINT."""
    from aggregator.config import AggregatorSettings
    from aggregator.server import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(AggregatorSettings(host=host, port=port, data_dir=data_dir))


@branch_app.command("create")
def branch_create(
    tree: Annotated[str, typer.Option(help="Tree name (created if new).")],
    branch: Annotated[str, typer.Option(help="Branch name, unique in its tree.")],
    leaves: Annotated[int, typer.Option(help="Number of leaves.")],
    target: Annotated[int | None, typer.Option(help="Aggregation target (default: number of leaves).")] = None,
    host: HostOption = DEFAULT_HOST,
    data_dir: DataDirOption = Path(".fedgrove"),
    env_dir: Annotated[Path | None, typer.Option(help="Write one <leaf>.env per leaf here.")] = None,
    leaf_name: Annotated[
        list[str] | None,
        typer.Option(
            "--leaf-name",
            help="Name of a leaf, once per leaf, in order (default: <branch>-leaf-<i>); e.g. the organisations, "
            "so that --env-dir writes org-1.env, org-2.env, ...",
        ),
    ] = None,
    round_timeout: Annotated[
        float | None, typer.Option(help="Seconds after a round's first upload to aggregate without the missing.")
    ] = None,
    min_leaves: Annotated[int | None, typer.Option(help="Quorum for a timed-out round.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print exactly one JSON document.")] = False,
) -> None:
    """Create a tree, a branch with its aggregation target and N leaves; the run starts in status `start`.

    Session tokens are shown once (and written to --env-dir); the server keeps only their hashes."""
    from aggregator.admin_client import AdminApiError
    from aggregator.registry import default_leaf_names
    from fedgrove.settings import write_leaf_env

    if leaf_name and len(leaf_name) != leaves:
        _fail(f"expected one --leaf-name per leaf ({leaves}), got {len(leaf_name)} (fix: repeat --leaf-name "
              "for every leaf, or leave it out)")
    if env_dir is not None:
        for name in leaf_name or default_leaf_names(branch, max(leaves, 0)):
            if (env_dir / f"{name}.env").exists():
                _fail(f"{env_dir / f'{name}.env'} exists and may hold another branch's credentials; nothing was "
                      "created (fix: choose another --env-dir, or move the file away)")
    # "sum": the Newton sums of federated preprocessing are hand-made fields the server adds up.
    options = {
        "leaf_names": leaf_name or None,
        "round_timeout_s": round_timeout,
        "min_leaves": min_leaves,
        "analytics_default_op": "sum",
    }
    try:
        with _admin(host, data_dir) as admin:
            created = admin.create_branch(
                tree=tree, branch=branch, leaves=leaves, target=target,
                **{key: value for key, value in options.items() if value is not None},
            )
    except AdminApiError as exc:
        _fail(str(exc))
    if env_dir is not None:
        for leaf in created["leaves"]:
            write_leaf_env(env_dir / f"{leaf['name']}.env", leaf, host)
    if as_json:
        print(json.dumps(created))
        return
    # Plain lines, not a table: a table fits the terminal by cutting ids and tokens short, and a token cut
    # short is lost (the server keeps only its hash).
    print(f"branch {branch} ({created['branch_id']}) in tree {tree} ({created['tree_id']})")
    rows = [("name", "id", "session_token")] + [(leaf["name"], leaf["id"], leaf["session_token"])
                                                for leaf in created["leaves"]]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    console.print("Session tokens are shown only now; the server stores their hashes.")
    if env_dir is not None:
        console.print(f"Wrote one .env per leaf to {env_dir}")


@branch_app.command("status")
def branch_status(
    branch_id: str,
    host: HostOption = DEFAULT_HOST,
    data_dir: DataDirOption = Path(".fedgrove"),
    metrics: Annotated[bool, typer.Option(help="Also list the leaves' reported performance.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Target, uploads in the open aggregation, aggregations so far, leaves connected."""
    from aggregator.admin_client import AdminApiError

    try:
        with _admin(host, data_dir) as admin:
            status = admin.branch_status(branch_id)
            if metrics:
                status["metrics"] = admin.metrics(branch_id)
    except AdminApiError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(status))
        return
    # Every value is shown as Text: what leaves (and the branch's creator) sent is never read as Rich markup.
    table = Table(show_header=False, title=Text(f"branch {status['name']}"))
    for key in (
        "branch_id", "tree_id", "aggregation_target", "run_status", "run_number", "open_round",
        "uploads_in_open_aggregation", "aggregations_completed", "last_aggregation_id",
    ):
        table.add_row(key, Text(str(status[key])))
    table.add_row("leaves_connected", Text(", ".join(status["leaves_connected"]) or "-"))
    table.add_row("uploaded_leaves", Text(", ".join(status["uploaded_leaves"]) or "-"))
    damaged = status.get("damaged_round")
    if damaged is not None:  # its uploads cannot be read back: `fedgrove run stop` sets them aside
        table.add_row(Text("damaged_round", style="red"), Text(f"round {damaged['round']}: {damaged['reason']}"))
    console.print(table)
    if metrics:
        rows = Table("leaf_id", "aggregation_id", "mode", "data", title="performance")
        for record in status["metrics"]:
            rows.add_row(*(Text(str(record[key])) for key in ("leaf_id", "aggregation_id", "mode")),
                         Text(json.dumps(record["data"])))
        console.print(rows)


def _set_run(status: str, branch_id: str, host: str, data_dir: Path) -> None:
    from aggregator.admin_client import AdminApiError

    try:
        with _admin(host, data_dir) as admin:
            result = admin.set_run_status(branch_id, status)
    except AdminApiError as exc:
        _fail(str(exc))
    console.print(f"branch {branch_id}: run {result['run_number']} is now {result['run_status']}")


@run_app.command("start")
def run_start(branch_id: str, host: HostOption = DEFAULT_HOST, data_dir: DataDirOption = Path(".fedgrove")) -> None:
    """Set the run to `start` (leaves may upload); connected leaves are told at once."""
    _set_run("start", branch_id, host, data_dir)


@run_app.command("pause")
def run_pause(branch_id: str, host: HostOption = DEFAULT_HOST, data_dir: DataDirOption = Path(".fedgrove")) -> None:
    """Set the run to `pause`: uploads are refused (409) until it starts again."""
    _set_run("pause", branch_id, host, data_dir)


@run_app.command("stop")
def run_stop(branch_id: str, host: HostOption = DEFAULT_HOST, data_dir: DataDirOption = Path(".fedgrove")) -> None:
    """Set the run to `stop`; a later start begins a new run number."""
    _set_run("stop", branch_id, host, data_dir)


def quiet_task_run_logs() -> None:
    """No "Finished in state Completed()" line per task run (1,250 in a 50-round demo); warnings still show."""
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)


@app.command()
def demo(
    organisations: Annotated[int, typer.Option(help="Number of organisations (leaves).")] = 5,
    rounds: Annotated[int, typer.Option(help="Federated rounds (= epochs of the baselines).")] = 50,
    split: Annotated[Split, typer.Option(help="iid, or dirichlet label skew.")] = Split.iid,
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration (with --split dirichlet).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the split, the model and the shuffles.")] = 0,
    preprocessing: Annotated[
        Preprocessing, typer.Option(help="federated (from sums, the default) or pooled (for comparison).")
    ] = Preprocessing.federated,
    out: Annotated[str | None, typer.Option(help="Artifact store: a folder or s3://bucket/prefix.")] = None,
    run_id: Annotated[str | None, typer.Option(help="Name of the run folder (default: time + random).")] = None,
) -> None:
    """Train the breast-cancer model across organisations through the aggregator, with Prefect."""
    if out is not None:
        os.environ["FEDGROVE_ARTIFACTS"] = out
    from fedgrove.prefect_ephemeral import temporary_server_for
    from fedgrove.settings import PipelineSettings

    prefect_server = temporary_server_for(PipelineSettings().prefect_ephemeral_database)
    with contextlib.ExitStack() as cleanup:
        if prefect_server is not None:
            prefect_server.start()  # it boots while the pipeline's modules import
            cleanup.callback(prefect_server.stop)  # also when something below fails before it serves
            console.print(f"Starting Prefect's temporary server on {prefect_server.api_url} (in memory: "
                          f"{prefect_server.in_memory})", highlight=False)
        from flows.federated_training import FederatedTrainingConfig, federated_training

        quiet_task_run_logs()
        config = FederatedTrainingConfig(
            organisations=organisations, rounds=rounds, split=split.value, alpha=alpha, seed=seed, run_id=run_id,
            preprocessing=preprocessing.value,
        )
        if prefect_server is not None:
            cleanup.enter_context(prefect_server.serving())
        summary = federated_training(config)
    table = Table(title=f"test accuracy / loss after {rounds} rounds ({split.value} split)")
    for column in ("organisation", "records", "federated acc", "alone acc", "federated loss", "alone loss"):
        table.add_column(column, justify="right")
    for org, federated in summary["federated"].items():
        alone = summary["local_only"][org]
        table.add_row(
            org, str(summary["records"][org]), f"{federated['accuracy_test']:.3f}", f"{alone['accuracy_test']:.3f}",
            f"{federated['loss_test']:.4f}", f"{alone['loss_test']:.4f}",
        )
    central = summary["centralised"]
    table.add_row("centralised", str(sum(summary["records"].values())), f"{central['accuracy_test']:.3f}", "",
                  f"{central['loss_test']:.4f}", "")
    console.print(table)
    console.print(f"features ({summary['preprocessing']} preprocessing): {', '.join(summary['features'])}")
    console.print(f"identical models at every leaf: {summary['identical_models']}; wall time {summary['wall_s']:.1f} s")
    console.print(f"result.png: {summary['outputs']['result.png']}")
    console.print(f"model:      {summary['outputs']['model.pt']}")


@app.command()
def predict(
    data: Annotated[Path, typer.Argument(help="CSV with the model's feature columns.")],
    model: Annotated[Path, typer.Option(help="A run's model.pt (model.json must sit beside it).")],
) -> None:
    """Print one prediction per row of a CSV file: row, probability of benign (target 1), prediction."""
    import pandas as pd

    from fedgrove.predict import predict as predict_frame

    try:
        frame = pd.read_csv(data)
        predictions = predict_frame(model, frame)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        _fail(str(exc))
    print("row,probability,prediction")
    for index, row in predictions.iterrows():
        print(f"{index},{row['probability']:.6f},{int(row['prediction'])}")


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="When to retrain.")] = "0 3 * * 1",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "Europe/Amsterdam",
) -> None:
    """Serve the weekly `federated-training/weekly` deployment from this machine (needs a Prefect server)."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.federated_training import federated_training

    federated_training.serve(name="weekly", schedules=[CronSchedule(cron=cron, timezone=timezone)])


if __name__ == "__main__":
    app()
