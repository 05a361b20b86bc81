"""The one door through which the pipeline starts an aggregation server on this machine and creates a branch.

Why this module exists: the pipeline speaks to an aggregator over HTTP only, as a remote site does; on one
machine (`fedgrove train`, the demo) the coordinator also needs to start one for the run. It may import this
module and nothing else of `aggregator` (an import-linter contract in pyproject.toml says so): a server in a
process of its own (`AggregatorProcess`, ended with the coordinator), and the admin API's HTTP client.

A command that knows its run will need the embedded aggregator (`fedgrove demo`, `fedgrove train`) launches it
first with `launch_ahead`, so that it boots (~1.5 s here) while the command's own modules import; the run's
branch provisioning then takes that process over (`take_launched`) instead of starting one and waiting.
"""

from __future__ import annotations

from pathlib import Path

from aggregator.admin_client import AdminApiError, AdminClient
from aggregator.process import AggregatorProcess

__all__ = ["AdminApiError", "AdminClient", "AggregatorProcess", "launch_ahead", "take_launched"]

_launched: dict[Path, AggregatorProcess] = {}


def launch_ahead(data_dir: Path, *, log: Path) -> AggregatorProcess:
    """Start the aggregator on `data_dir` now, without waiting for it; the caller stops it at its end (a
    stopped or taken-over process is left alone)."""
    process = AggregatorProcess(data_dir, log=log).launch()
    _launched[process.data_dir] = process
    return process


def take_launched(data_dir: Path) -> AggregatorProcess | None:
    """The process `launch_ahead` started on `data_dir`, once, if it is still running; else None."""
    process = _launched.pop(data_dir.resolve(), None)
    return process if process is not None and process.running else None
