"""The terminal every command writes to, and the one way a command fails: `error: ...` on standard error, so that
what a command prints on standard output (predictions, a branch's JSON) is never mixed with it."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()
errors = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print `error: <message>` to standard error (the message as written: no markup, no line breaks of its own)
    and exit 1."""
    errors.print("[red]error:[/red] ", end="")
    errors.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)
