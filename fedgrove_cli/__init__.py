"""`fedgrove`: train a federation from a spec, run one organisation's leaf, split a table, predict, run
the aggregation server, and keep a registry of trained models."""

# Nothing imports this package: it is the top of the import graph (cli -> flows -> tasks -> fedgrove).

from __future__ import annotations

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
