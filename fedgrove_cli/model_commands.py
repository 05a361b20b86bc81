"""`fedgrove models`: the model registry in the artifact store, its runs and its `production` pointer."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fedgrove_cli.console import console, fail

models_app = typer.Typer(no_args_is_help=True, help="The model registry: list runs, show one, promote one.")

ArtifactsOption = Annotated[str | None, typer.Option(
    "--artifacts", envvar="FEDGROVE_ARTIFACTS", help="Artifact store: a folder or s3://bucket/prefix (default ./runs).")]


def _registry(artifacts: str | None):  # type: ignore[no-untyped-def]
    from fedgrove.registry import Registry
    from fedgrove.registry_store import RegistryStoreError, index_store_from_url

    try:
        return Registry(index_store_from_url(artifacts))
    except RegistryStoreError as exc:
        fail(str(exc))


def _index(registry):  # type: ignore[no-untyped-def]
    from fedgrove.registry import RegistryError
    from fedgrove.registry_store import RegistryStoreError

    try:
        return registry.index()
    except (RegistryError, RegistryStoreError) as exc:
        fail(str(exc))


@models_app.command("list")
def models_list(artifacts: ArtifactsOption = None) -> None:
    """Every registered run, newest first, with its pointers (production, latest) and metrics."""
    from fedgrove.registry_report import registry_rows

    registry = _registry(artifacts)
    rows = registry_rows(_index(registry))
    if not rows:
        console.print(f"no runs registered in {registry.location} yet (a finished run registers itself)",
                      highlight=False)
        return
    table = Table(title=f"Model registry: {registry.location}")
    for column in rows[0]:
        table.add_column(column, overflow="fold", no_wrap=column in {"run", "status"})
    for row in rows:
        table.add_row(*(str(value) for value in row.values()),
                      style="bold green" if "production" in str(row["pointers"]) else None)
    console.print(table)


@models_app.command("show")
def models_show(run_id: Annotated[str, typer.Argument(help="The run to show: its id, or latest or production.")],
                artifacts: ArtifactsOption = None) -> None:
    """One run's entry: spec hash, code version, sites, final and best-round metrics, where its model is."""
    from fedgrove.registry import RunNotRegistered, entry_of, resolve_run
    from fedgrove.registry_report import entry_lines

    registry = _registry(artifacts)
    index = _index(registry)
    try:
        run_id = resolve_run(index, run_id, location=registry.location)
        entry = entry_of(index, run_id, location=registry.location)
    except RunNotRegistered as exc:
        fail(str(exc))
    table = Table(show_header=False, title=f"Run {run_id}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in entry_lines(entry, index):
        table.add_row(label, value)
    console.print(table)


@models_app.command("promote")
def models_promote(run_id: Annotated[str, typer.Argument(help="The run to make production: its id, or latest.")],
                   artifacts: ArtifactsOption = None) -> None:
    """Make a completed run production (by hand: no metric rule; a failed run is refused)."""
    from fedgrove.registry import RegistryError, resolve_run
    from fedgrove.registry_store import RegistryStoreError

    registry = _registry(artifacts)
    index = _index(registry)
    try:
        run_id = resolve_run(index, run_id, location=registry.location)
        outcome = registry.promote(run_id, expected_production=index.production,
                                   reason="promoted by hand with `fedgrove models promote`")
    except (RegistryError, RegistryStoreError) as exc:
        fail(str(exc))
    if not outcome.promoted:
        fail(outcome.message)
    console.print(f"run {run_id} is now production (was run {index.production or '(none)'})", highlight=False)
