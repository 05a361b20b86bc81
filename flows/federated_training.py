"""`federated-training`: the coordinator. Puts the steps in order: settle the spec, start every site's
`leaf-training` (in this process on one machine, or as each site's deployment in sites mode), read the
sites' results, train the centralised baseline where one process holds all the data, write the outputs.

It never reads a site's records in sites mode: it sends the spec's site names, never a path.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedgrove.demo import DemoOptions
from fedgrove.model import outputs_for
from fedgrove.model_card import ModelCard
from fedgrove.registry_entry import best_round
from fedgrove.run_ids import run_id_problem
from fedgrove.run_record import (
    RECORD_FILE,
    ResumeRefused,
    RunRecord,
    read_run_record,
    refuse_changed_demo,
    refuse_changed_mode,
    refuse_changed_spec,
    write_run_record,
)
from fedgrove.run_summary import build_summary, epochs_frame
from fedgrove.settings import PipelineSettings
from fedgrove.site_config import SiteConfig, shared_artifacts_url
from fedgrove.spec import FederationSpec
from fedgrove.tracking import track_run_configuration
from flows.leaf_training import LeafAssignment
from flows.sites import run_site_deployments, run_sites_in_process
from tasks.baselines import train_centralised
from tasks.outputs import publish_prefect_artifacts, write_outputs
from tasks.provisioning import forget_credentials, provide_branch
from tasks.registry import register_and_promote
from tasks.run_setup import agreed_preprocessing, best_round_parameters, collect_site_results, settle_spec
from tasks.warm_start import choose_warm_start


class RunOptions(BaseModel):
    """How to run the spec: where the sites run, and under which id."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["local", "sites"] = Field(
        default="local",
        description="local: every site's leaf in this process on an embedded aggregator (one machine); sites: "
        "each site's leaf-training/<site> deployment on its own worker, with its own data and credentials",
    )
    run_id: str | None = None
    resume: bool = Field(default=False, description="continue run_id from the last round every site completed "
                         "(a Prefect retry of this flow run does so by itself)")
    round_timeout_s: float | None = Field(
        default=None, gt=0, description="local mode: aggregate without the leaves missing this long after the first"
    )
    min_leaves: int | None = Field(default=None, ge=1, description="local mode: quorum for a timed-out round")
    demo: DemoOptions = Field(default=DemoOptions(), description="the built-in demo's split, used without a spec")
    init_from: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                  description="overrides the spec's train.init_from: none, latest, production or a "
                                  "run id (the weekly deployment starts from production)")

    @field_validator("run_id")
    @classmethod
    def _run_id_names_a_run(cls, value: str | None) -> str | None:
        problem = run_id_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(f"run id {value!r}: {problem} (fix: pick another run id, such as 2026-q4-readmissions)")
        return value


class SiteFlowsFailed(RuntimeError):
    """Sites did not finish; the message names each and why."""


class SecureAggregationNeedsEverySite(ValueError):
    """Secure aggregation with a quorum: refused before anything starts."""


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_identity(run: RunOptions, work_dir: Path) -> tuple[str, bool]:
    """The run id and whether to resume it. Without an id the run takes its flow run's, so that a Prefect retry
    of this flow run (its run count above 1) finds the run it started and resumes it."""
    if run.resume and run.run_id is None:
        raise ResumeRefused("resume needs the id of the run to resume (fix: --resume RUN_ID, or run.run_id)")
    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    run_id = run.run_id or (f"{flow_run.created or datetime.now(UTC):%Y%m%d-%H%M%S}-{flow_run.id.hex[:6]}"
                            if flow_run is not None else new_run_id())
    retried = flow_run is not None and flow_run.run_count > 1 and (work_dir / "runs" / run_id / RECORD_FILE).is_file()
    return run_id, run.resume or retried


def _describe(failures: dict[str, str]) -> str:
    """Each distinct reason once, after the sites that gave it (sites stopped by one refusal share its words)."""
    by_reason: dict[str, list[str]] = {}
    for site, reason in failures.items():
        by_reason.setdefault(reason, []).append(site)
    return "; ".join(f"{'site' if len(sites) == 1 else 'sites'} {', '.join(sites)}: {reason}"
                     for reason, sites in by_reason.items())


@flow(name="federated-training")
def federated_training(spec: FederationSpec | None = None, run: RunOptions = RunOptions()) -> Any:
    started = time.perf_counter()
    logger = get_run_logger()
    settings = PipelineSettings()
    run_id, resume = run_identity(run, settings.work_dir)
    work = (settings.work_dir / "runs" / run_id).resolve()
    record = read_run_record(work, run_id) if resume else None
    spec_given = spec is not None or settings.spec is not None
    if record is not None and spec is None and settings.spec is None:
        refuse_changed_demo(record, run.demo)
        spec = record.spec  # resumed as it started
    spec = settle_spec(spec, spec_file=settings.spec, mode=run.mode, demo=run.demo, work=work)
    if run.init_from is not None:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"init_from": run.init_from})})
    if spec.privacy.secure_aggregation and (run.round_timeout_s is not None or run.min_leaves is not None):
        raise SecureAggregationNeedsEverySite(
            "secure aggregation needs every site in every round, and a quorum (round_timeout_s / min_leaves) would "
            "aggregate without some: the masks of the missing sites would not cancel (fix: drop round_timeout_s and "
            "min_leaves, or set privacy.secure_aggregation: false)")
    if record is not None:
        refuse_changed_mode(record, run.mode)
        refuse_changed_spec(record, spec)
        logger.info("resuming run %s", run_id)
    else:
        record = RunRecord(run_id=run_id, mode=run.mode, spec=spec,
                           demo=None if spec_given else run.demo)
        write_run_record(work, record)
    track_run_configuration({"spec": spec.shared().model_dump(mode="json"), "run_id": run_id, "mode": run.mode})
    artifacts_url = shared_artifacts_url(settings.artifacts)
    progress_id = create_progress_artifact(progress=0.0, key="federated-training-progress",
                                           description=f"Rounds completed, run {run_id}")
    if resume:
        warm_start = record.warm_start  # the model it started from, even if production moved since
    else:
        warm_start = choose_warm_start(spec, artifacts_url=artifacts_url)
        if spec.train.init_from != "none":
            logger.info("train.init_from %s: %s", spec.train.init_from,
                        f"starting from the model of run {warm_start}" if warm_start else
                        "no registered run yet, training from scratch")
        record = record.model_copy(update={"warm_start": warm_start})
        write_run_record(work, record)
    assignments = [
        LeafAssignment(spec=spec.shared(), site=site, run_id=run_id, aggregation_timeout_s=settings.aggregation_timeout_s,
                       progress_artifact_id=str(progress_id) if index == 0 else None, resume=resume,
                       warm_start=warm_start, keep_round_models=index == 0)
        for index, site in enumerate(spec.roster())
    ]
    if run.mode == "sites":
        failures = run_site_deployments(assignments)
    else:
        options = {key: value for key, value in {"round_timeout_s": run.round_timeout_s,
                                                 "min_leaves": run.min_leaves}.items() if value is not None}
        with provide_branch(settings, sites=spec.roster(), run_id=run_id, credentials_dir=work / "credentials",
                            branch_options=options, resume=resume) as branch:
            configs = {
                site: SiteConfig(data=source, source_setting=f"the spec's sites.{site}", env_file=branch.env_files[site],
                                 work_dir=work, artifacts=artifacts_url)
                for site, source in spec.sites.items() if source is not None
            }
            failures = run_sites_in_process(assignments, configs)
    finished = [site for site in spec.roster() if site not in failures]
    if not failures:
        forget_credentials(work / "credentials")
    if not finished:
        raise SiteFlowsFailed(f"every site failed: {_describe(failures)}")
    results, parameters = collect_site_results(run_id=run_id, artifacts_url=artifacts_url, sites=finished)
    preprocessing = agreed_preprocessing(results)
    centralised = train_centralised(spec, preprocessing, sites=finished) if run.mode == "local" else None
    summary = build_summary(run_id=run_id, spec=spec, mode=run.mode, results=results, centralised=centralised,
                            failures=failures)
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    epochs = epochs_frame(results, centralised)
    card = ModelCard(run_id=run_id, spec=spec.shared(), preprocessing=preprocessing,
                     n_inputs=len(preprocessing.input_names),
                     n_outputs=outputs_for(preprocessing.task, len(preprocessing.labels)),
                     metrics=summary["federated_pooled"])
    best = best_round(epochs)
    keeper = assignments[0].site  # it kept every round's aggregate (keep_round_models)
    best_parameters = best_round_parameters(run_id=run_id, artifacts_url=artifacts_url, best=best,
                                            keeper=keeper if keeper in finished else None)
    uris, result_url = write_outputs(run_id=run_id, staging=work / "outputs", artifacts_url=artifacts_url,
                                     epochs=epochs, card=card, parameters=parameters, summary=summary,
                                     best=None if best_parameters is None else (best_parameters, best.metrics))
    publish_prefect_artifacts(summary=summary, epochs=epochs, uris=uris, result_url=result_url)
    register_and_promote(spec=spec, summary=summary, epochs=epochs, uris=uris, failures=failures,
                         artifacts_url=artifacts_url)
    update_progress_artifact(progress_id, 100.0)
    if not failures:
        write_run_record(work, record.model_copy(update={"finished": True}))
    logger.info("run %s finished in %.1f s; outputs: %s", run_id, summary["wall_s"], uris.get("result.png"))
    stopped = summary["privacy"]["message"]
    if failures:
        raise SiteFlowsFailed(f"{'site' if len(failures) == 1 else 'sites'} {', '.join(failures)} failed "
                              f"({_describe(failures)}); the other sites' outputs are in {uris.get('summary.json')}")
    if stopped:  # the run's final state says why it trained fewer rounds than the spec asked
        logger.warning("run %s %s", run_id, stopped)
        return Completed(message=stopped, data={**summary, "outputs": uris})
    return {**summary, "outputs": uris}
