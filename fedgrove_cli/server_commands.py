"""The aggregation server's commands: serve it, create branches and leaves (the BranchKey dashboard's job),
show a branch, and start, pause or stop its run. They speak to the server through its admin API only."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedgrove_cli.console import console, fail as _fail

aggregator_app = typer.Typer(no_args_is_help=True, help="The aggregation server.")
branch_app = typer.Typer(no_args_is_help=True, help="Trees, branches and leaves (the BranchKey dashboard's job).")
run_app = typer.Typer(no_args_is_help=True, help="Start, pause or stop a branch's run.")

DEFAULT_HOST = "http://127.0.0.1:8080"
HostOption = Annotated[str, typer.Option(help="The aggregator's URL.", envvar="BRANCHKEY_HOST")]
DataDirOption = Annotated[
    Path, typer.Option(help="The aggregator's data folder (holds its admin token).", envvar="FEDGROVE_DATA_DIR")
]


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
    from aggregator.database_errors import DatabaseRefused
    from aggregator.security import WeakSecret
    from aggregator.server import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve_forever(AggregatorSettings(host=host, port=port, data_dir=data_dir))
    except (WeakSecret, DatabaseRefused) as exc:  # as python -m aggregator: one line and exit 2, no traceback
        logging.getLogger("aggregator").error("not started: %s", exc)
        raise typer.Exit(2) from None


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
    options = {"leaf_names": leaf_name or None, "round_timeout_s": round_timeout, "min_leaves": min_leaves}
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


RUN_STATUS_WORDS = {"start": "started (leaves may upload)", "pause": "paused (uploads wait; the round is kept)",
                    "stop": "stopped (a later start begins a new run)"}


def _set_run(status: str, branch_id: str, host: str, data_dir: Path) -> None:
    from aggregator.admin_client import AdminApiError

    try:
        with _admin(host, data_dir) as admin:
            result = admin.set_run_status(branch_id, status)
    except AdminApiError as exc:
        _fail(str(exc))
    said = RUN_STATUS_WORDS.get(result["run_status"], result["run_status"])
    console.print(f"branch {branch_id}: run {result['run_number']} is now {said}", highlight=False)


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
