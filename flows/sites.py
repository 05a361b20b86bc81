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


class SiteRunsFailed(RuntimeError):
    pass


def deployment_name(organisation: str) -> str:
    return f"{DEPLOYMENT_FLOW}/{organisation}"


def _run_site(config: LeafTrainingConfig) -> FlowRun:
    return run_deployment(
        name=deployment_name(config.organisation),
        parameters={"config": config.model_dump(mode="json")},
        timeout=None,
        as_subflow=True,
    )


def run_leaf_deployments(configs: list[LeafTrainingConfig], *, scratch: Path) -> list[LeafTrainingResult]:
    """Start every organisation's deployment at once and wait for all; fail naming each that did not complete."""
    with ThreadPoolExecutor(max_workers=len(configs), thread_name_prefix="site") as pool:
        runs = dict(zip((c.organisation for c in configs), pool.map(_run_site, configs), strict=True))
    failed = {org: run for org, run in runs.items() if run.state is None or not run.state.is_completed()}
    if failed:
        detail = "; ".join(f"{org}: flow run {run.name} ended {run.state.name if run.state else 'unknown'}"
                           for org, run in failed.items())
        raise SiteRunsFailed(f"leaf deployments did not complete for {', '.join(failed)} ({detail})")
    results = []
    for config in configs:
        summary, parameters_path = read_leaf_result(
            run_id=config.run_id, artifacts_url=config.artifacts, organisation=config.organisation,
            scratch=scratch / config.organisation,
        )
        results.append(LeafTrainingResult.model_validate({**summary, "parameters_path": parameters_path}))
    return results
