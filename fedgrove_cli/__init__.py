"""`fedgrove`: train a federation from a spec, run one organisation's leaf, split a table, predict, run
the aggregation server, and keep a registry of trained models."""

# Nothing imports this package: it is the top of the import graph (cli -> flows -> tasks -> fedgrove).

from __future__ import annotations

import gc

import typer

from fedgrove_cli import alert_commands, data_commands, model_commands, run_commands, server_commands

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.command()(run_commands.train)
app.command()(run_commands.demo)
app.command()(run_commands.leaf)
app.command()(data_commands.split)
app.command()(data_commands.predict)
app.command()(run_commands.serve)
app.add_typer(server_commands.aggregator_app, name="aggregator")
app.add_typer(server_commands.branch_app, name="branch")
app.add_typer(server_commands.run_app, name="run")
app.add_typer(model_commands.models_app, name="models")
app.add_typer(alert_commands.app, name="alerts")


def main() -> None:
    """The `fedgrove` command. At its end every object it made moves to the collector's permanent generation,
    so the interpreter's last collection skips them: that collection over Prefect's, torch's and pandas'
    modules took 1.2-1.4 s of every command's exit here, 0.3 s with this. Exit handlers still run (logging
    flushes its handlers, Prefect's services drain) and module teardown still releases what it holds; only
    reference cycles are left to the operating system, as at any process exit."""
    try:
        app()
    finally:
        gc.freeze()
