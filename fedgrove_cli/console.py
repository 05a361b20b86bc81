"""The terminal every command writes to, and the one way a command fails."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console()


def fail(message: str) -> NoReturn:
    """Print `error: <message>` (the message as written: no markup, no line breaks of its own) and exit 1."""
    console.print("[red]error:[/red] ", end="")
    console.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)
