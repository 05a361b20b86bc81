"""The one door through which the pipeline starts an aggregation server on this machine and creates a branch.

Why this module exists: the pipeline speaks to an aggregator over HTTP only, as a remote site does; on one
machine (`fedgrove train`, the demo) the coordinator also needs to start one for the run. It may import this
module and nothing else of `aggregator` (an import-linter contract in pyproject.toml says so): a server in a
process of its own (`AggregatorProcess`, ended with the coordinator), and the admin API's HTTP client.
"""

from __future__ import annotations

from aggregator.admin_client import AdminApiError, AdminClient
from aggregator.process import AggregatorProcess

__all__ = ["AdminApiError", "AdminClient", "AggregatorProcess"]
