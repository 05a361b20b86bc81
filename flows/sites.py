"""Running every site's `leaf-training` at once: in this process (one machine), or as each site's own
deployment on its own worker (sites mode). Either way a site that fails is data, reported at the end.

In sites mode the coordinator starts `leaf-training/<site>` with the assignment alone (the spec without
any source, the site's name, the run id): the site's worker supplies its data and credentials.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from fedgrove.site_config import SiteConfig
from flows.leaf_training import LeafAssignment, leaf_training

DEPLOYMENT_FLOW = "leaf-training"


def deployment_name(site: str) -> str:
    return f"{DEPLOYMENT_FLOW}/{site}"


def run_sites_in_process(assignments: list[LeafAssignment], configs: dict[str, SiteConfig]) -> dict[str, str]:
    """Every site's leaf flow in a thread of this process, as a subflow of this run; returns, per failed
    site, why it failed."""
    with ThreadPoolExecutor(max_workers=len(assignments), thread_name_prefix="leaf") as pool:
        futures = {
            a.site: pool.submit(contextvars.copy_context().run, leaf_training, a, configs[a.site]) for a in assignments
        }
        outcomes = {site: future.exception() for site, future in futures.items()}
    return {site: str(exc) for site, exc in outcomes.items() if exc is not None}


def _run_site_deployment(assignment: LeafAssignment) -> FlowRun:
    return run_deployment(
        name=deployment_name(assignment.site),
        parameters={"assignment": assignment.model_dump(mode="json")},
        timeout=None,
        as_subflow=True,
    )


def run_site_deployments(assignments: list[LeafAssignment]) -> dict[str, str]:
    """Start every site's deployment at once and wait for all; returns, per site whose run did not complete,
    how it ended."""
    with ThreadPoolExecutor(max_workers=len(assignments), thread_name_prefix="site") as pool:
        runs = dict(zip((a.site for a in assignments), pool.map(_run_site_deployment, assignments), strict=True))
    return {
        site: f"flow run {run.name} ended {run.state.name if run.state else 'in an unknown state'}"
        + (f": {run.state.message}" if run.state and run.state.message else "")
        for site, run in runs.items()
        if run.state is None or not run.state.is_completed()
    }
