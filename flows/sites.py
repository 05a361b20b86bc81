"""Sites mode: each organisation's `leaf-training/<organisation>` deployment runs on that organisation's
own Prefect worker (its own machine, data and credentials); the coordinator only starts and awaits them.

Leaves publish their results to the shared artifact store, where the coordinator reads them back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from flows.leaf_training import LeafTrainingConfig, LeafTrainingResult
from tasks.outputs import read_leaf_result

DEPLOYMENT_FLOW = "leaf-training"


def deployment_name(organisation: str) -> str:
    return f"{DEPLOYMENT_FLOW}/{organisation}"


def _run_site(config: LeafTrainingConfig) -> FlowRun:
    return run_deployment(
        name=deployment_name(config.organisation),
        parameters={"config": config.model_dump(mode="json")},
        timeout=None,
        as_subflow=True,
    )


def run_leaf_deployments(
    configs: list[LeafTrainingConfig], *, scratch: Path
) -> tuple[list[LeafTrainingResult], dict[str, str]]:
    """Start every organisation's deployment at once and wait for all; returns the results and, per
    organisation whose run did not complete, how it ended."""
    with ThreadPoolExecutor(max_workers=len(configs), thread_name_prefix="site") as pool:
        runs = dict(zip((c.organisation for c in configs), pool.map(_run_site, configs), strict=True))
    failures = {
        org: f"flow run {run.name} ended {run.state.name if run.state else 'in an unknown state'}"
        for org, run in runs.items()
        if run.state is None or not run.state.is_completed()
    }
    results = []
    for config in (c for c in configs if c.organisation not in failures):
        summary, parameters_path = read_leaf_result(
            run_id=config.run_id, artifacts_url=config.artifacts, organisation=config.organisation,
            scratch=scratch / config.organisation,
        )
        results.append(LeafTrainingResult.model_validate({**summary, "parameters_path": parameters_path}))
    return results, failures
