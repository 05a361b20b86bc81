"""`leaf-training`: one site's side of a federated run, run where its data lives.

The coordinator sends an `assignment` (the spec without any site's source, the site's name, the run id);
everything that is the site's own (its data source, scratch folder, credentials, artifact store) comes from
the site: its worker's environment, or its own deployment's `site` parameter. A `site` parameter that
differs from the deployment's own, i.e. one set by whoever started the run, is refused, as are
site-owned keys inside the assignment. Credentials never travel as parameters: Prefect shows parameters
in its UI and stores them with every run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedgrove.checkpoints import Agreement, LeafCheckpoints, RoundCheckpoint
from fedgrove.client_output import route_sdk_output_to_debug_log
from fedgrove.metrics import HEADLINE
from fedgrove.progress import ProgressReporter, round_finished
from fedgrove.results import SiteResult, parameter_digest
from fedgrove.settings import LeafSettings, PipelineSettings
from fedgrove.site_config import SiteConfig, shared_artifacts_url, site_config_from_environment
from fedgrove.site_training import initial_parameters
from fedgrove.spec import FederationSpec
from tasks.exchange import (
    connect_leaf,
    missed_aggregations,
    report_performance,
    upload_parameters,
    wait_for_aggregation,
)
from tasks.preprocessing import SiteReading, agree_preprocessing, read_site_data
from tasks.site_results import publish_round_models, publish_site_result
from tasks.reload import reload_and_evaluate
from tasks.training import fit_local, prepare_inputs, train_alone_task
from tasks.warm_start import load_warm_start

SITE_OWNED_KEYS = ("data", "sql", "data_path", "test_path", "work_dir", "env_file", "artifacts", "base_dir")
REPORT_EVERY_ROUNDS = 10
TASK_RUNS_PER_ROUND = 4  # fit-local, upload-parameters, wait-for-aggregation, reload-and-evaluate


class SiteOwnedParameter(ValueError):
    """A parameter tried to set what only the site sets."""


class LeafAssignment(BaseModel):
    """What the coordinator tells a site: what to train and under which run. Nothing the site owns."""

    model_config = ConfigDict(extra="forbid")

    spec: FederationSpec
    site: str = Field(description="this site's name, one of the spec's sites")
    run_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    aggregation_timeout_s: float = Field(default=120.0, gt=0)
    progress_artifact_id: str | None = None
    resume: bool = Field(default=False, description="continue the run from this site's checkpoint, not round 1")
    warm_start: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                   description="the registered run whose model this run starts from")
    keep_round_models: bool = Field(default=False, description="keep every round's aggregate and publish them "
                                    "with the result, so that the run can keep its best round's model")

    @model_validator(mode="before")
    @classmethod
    def _refuse_site_owned_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            owned = [key for key in SITE_OWNED_KEYS if key in value]
            if owned:
                raise ValueError(
                    f"parameter {', '.join(repr(k) for k in owned)} sets what only the site sets (its data source, "
                    "scratch folder, credentials and artifact store are set at the site: FEDGROVE_SITE_DATA and "
                    "friends in its worker's environment, or its own deployment's `site` parameter)"
                )
        return value

    @model_validator(mode="after")
    def _spec_names_no_source(self) -> LeafAssignment:
        if self.site not in self.spec.sites:
            raise ValueError(f"site {self.site!r} is not one of the spec's sites {self.spec.roster()}")
        with_source = [name for name, source in self.spec.sites.items() if source is not None]
        if with_source:
            raise ValueError(f"parameter 'spec.sites' sets the data source of {', '.join(with_source)}; only a site "
                             "sets its own (fix: send spec.shared(), the site names alone)")
        return self


def refuse_site_config_from_caller(site: SiteConfig | None) -> None:
    """In a deployment run, `site` must be the deployment's own parameter, not the caller's."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if site is None or run is None or run.deployment_id is None:
        return  # no site parameter, or called in-process by a coordinator on this machine: it is the site
    with get_client(sync_client=True) as client:
        own = (client.read_deployment(run.deployment_id).parameters or {}).get("site")
    if _normalised(run.parameters.get("site")) != _normalised(own):
        raise SiteOwnedParameter(
            "parameter 'site' was set by whoever started this run, not by this site's own deployment; a site's "
            "data source, scratch folder and credentials are set only at the site (fix: start the run with the "
            "assignment alone)"
        )


def _normalised(value: Any) -> Any:
    return SiteConfig.model_validate(value).model_dump(mode="json") if value is not None else None


@flow(name="leaf-training")
def leaf_training(assignment: LeafAssignment, site: SiteConfig | None = None) -> quote[SiteResult]:
    """One site's part of a run. Returns its result quoted (`.unquote()` gives the `SiteResult`): Prefect walks
    a flow's return value for futures, and a 50-round result took it 0.1 s at every leaf's end."""
    logger = get_run_logger()
    refuse_site_config_from_caller(site)
    spec, name = assignment.spec, assignment.site
    config = site or site_config_from_environment(name)
    settings = PipelineSettings()
    if not settings.verbose:
        route_sdk_output_to_debug_log()
    credentials = LeafSettings.load(config.env_file)
    work_dir = (config.work_dir or settings.work_dir).resolve() / "leaves" / assignment.run_id / name
    session = connect_leaf(credentials, work_dir)
    progress = ProgressReporter(assignment.progress_artifact_id, logger=logger) \
        if assignment.progress_artifact_id else None
    checkpoints = LeafCheckpoints(work_dir / "checkpoints")
    try:
        started = time.perf_counter()
        reading = read_site_data(spec, site=name, source=config.data, base_dir=config.base_dir,
                                 setting=config.source_setting)
        if assignment.resume:
            agreement, latest = _checkpoint_to_resume(checkpoints, site=name, run_id=assignment.run_id,
                                                      reading=reading)
            session.resume_from(latest.loaded if latest is not None else agreement.loaded)
            missed = missed_aggregations(session, last_loaded=session.loaded_in_order[-1])
        else:
            checkpoints.clear()
            agreed = agree_preprocessing(session, reading, spec=spec, site=name,
                                         timeout_s=assignment.aggregation_timeout_s, run_id=assignment.run_id)
            agreement = Agreement(preprocessing=agreed.preprocessing, privacy=agreed.privacy,
                                  loaded=list(session.loaded_in_order))
            checkpoints.save_agreement(agreement)
            latest, missed = None, []
        preprocessing_seconds = time.perf_counter() - started
        assert reading.table is not None  # a site without a table made the agreement refuse
        arrays = prepare_inputs(reading.table, agreement.preprocessing)
        if latest is None:
            parameters = initial_parameters(spec, len(agreement.preprocessing.input_names), arrays.n_outputs)
            if assignment.warm_start is not None:
                parameters = load_warm_start(assignment.warm_start, artifacts_url=config.artifacts or
                                             shared_artifacts_url(None), spec=spec,
                                             preprocessing=agreement.preprocessing, n_outputs=arrays.n_outputs)
            optimizer_state = None  # Adam's moments stay here, at the site, from round to round
            history, digests, round_seconds = [], [], []
        else:
            parameters, optimizer_state = latest.parameters, latest.optimizer
            history, digests, round_seconds = list(latest.history), list(latest.digests), list(latest.round_seconds)
            logger.info("%s resumes run %s after round %d%s", name, assignment.run_id, latest.round_number,
                        f"; {len(missed)} round(s) the others finished meanwhile loaded, not uploaded again" if missed
                        else "")
        # Prefect walks every task argument for futures to record as inputs; these hold none (quote: don't look).
        inputs, model_spec, the_session = quote(arrays), quote(spec), quote(session)
        plan = agreement.privacy  # pair secrets and DP budget: never a parameter's value Prefect stores
        privacy, secure = quote(plan), quote(plan.secure)
        rounds = plan.rounds
        for round_number in range(len(history) + 1, rounds + 1):
            started = time.perf_counter()
            local, optimizer_state = fit_local(quote(parameters), inputs, spec=model_spec, site=name,
                                               round_number=round_number, state=quote(optimizer_state),
                                               privacy=privacy)
            if missed:  # finished while this leaf was away: its upload is in it already
                aggregation_id = missed.pop(0)
            else:
                upload_parameters(the_session, quote(local), weighting=float(arrays.records),
                                  round_number=round_number, secure=secure)
                aggregation_id = wait_for_aggregation(the_session, round_number=round_number,
                                                      timeout_s=assignment.aggregation_timeout_s)
            parameters, metrics = reload_and_evaluate(
                the_session, aggregation_id, template=quote(local), arrays=inputs, spec=model_spec,
                round_number=round_number, leaf_name=credentials.leaf_name, secure=secure,
                epsilon=plan.epsilons[round_number - 1] if plan.epsilons else None)
            history.append(metrics)
            digests.append(parameter_digest(parameters))
            round_seconds.append(time.perf_counter() - started)
            if assignment.keep_round_models:  # before the round's checkpoint: a resume never skips a round's model
                checkpoints.save_round_model(round_number, parameters)
            checkpoints.save_round(RoundCheckpoint(
                round_number=round_number, parameters=parameters, optimizer=optimizer_state, history=history,
                digests=digests, round_seconds=round_seconds, loaded=list(session.loaded_in_order)))
            if round_number == rounds or round_number % REPORT_EVERY_ROUNDS == 0:
                report_performance(session, aggregation_id, metrics.flat())
            if progress is not None:
                progress.report(100.0 * round_number / rounds)
            round_finished(assignment.run_id, name, round_number, rounds)
            every = round_number % REPORT_EVERY_ROUNDS == 0 or round_number in (1, rounds)
            headline = HEADLINE[spec.task][0]
            logger.log(logging.INFO if every else logging.DEBUG, "%s round %d/%d: %s_test %s, loss_test %s",
                       name, round_number, rounds, headline, _shown(metrics.test.get(headline), 3),
                       _shown(metrics.test.get("loss"), 4))
        checkpoints.forget_secrets()  # every round is done: no mask is made or removed again
    finally:
        if progress is not None:
            progress.close()  # never raises, so the session below is closed whatever happens here
        session.close()
    alone = train_alone_task(quote(arrays), spec=quote(spec), site=name)
    result = SiteResult(
        site=name,
        leaf_name=credentials.leaf_name,
        records=arrays.records,
        test_records=len(arrays.y_test),
        unlabelled=reading.table.unlabelled,
        preprocessing=agreement.preprocessing,
        federated=history,
        alone=alone,
        parameter_digests=digests,
        round_seconds=round_seconds,
        preprocessing_seconds=preprocessing_seconds,
        privacy_message=plan.stop_message,
        imputed=arrays.imputed.imputed,
    )
    artifacts_url = config.artifacts or shared_artifacts_url(None)
    publish_site_result(run_id=assignment.run_id, artifacts_url=artifacts_url, result=quote(result),
                        parameters=quote(parameters), staging=work_dir / "result")
    if assignment.keep_round_models:
        _publish_round_models(checkpoints, run_id=assignment.run_id, artifacts_url=artifacts_url, site=name,
                              staging=work_dir / "result", logger=logger)
    return quote(result)


def _publish_round_models(checkpoints: LeafCheckpoints, *, run_id: str, artifacts_url: str | None, site: str,
                          staging: Path, logger: Any) -> None:
    """Best effort: without them the run keeps its last round's model, not its best one, and says so."""
    try:
        publish_round_models(run_id=run_id, artifacts_url=artifacts_url, site=site,
                             round_models=quote(checkpoints.round_models()), staging=staging)
    except Exception as exc:
        logger.warning("%s could not publish its round models, so the run keeps no best-round model (%s: %s)",
                       site, type(exc).__name__, exc)


class NothingToResume(RuntimeError):
    """The site has no checkpoint of the run to continue from."""


def _checkpoint_to_resume(
    checkpoints: LeafCheckpoints, *, site: str, run_id: str, reading: SiteReading
) -> tuple[Agreement, RoundCheckpoint | None]:
    if reading.table is None:
        raise NothingToResume(f"site {site} cannot resume run {run_id}: {reading.refusal}")
    agreement = checkpoints.load_agreement()
    if agreement is None:
        raise NothingToResume(
            f"site {site} has no checkpoint of run {run_id}: it stopped before the preprocessing was agreed, so "
            "there is nothing to resume (fix: start the run again without --resume)")
    latest = checkpoints.latest_round()
    if latest is not None and latest.round_number >= agreement.privacy.rounds:
        return agreement, latest  # it had finished: it publishes its result again
    if agreement.privacy.secure is not None and not agreement.privacy.secure.secrets:
        raise NothingToResume(f"site {site}'s checkpoint of run {run_id} no longer holds its pair secrets (fix: "
                              "start the run again without --resume)")
    return agreement, latest


def _shown(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
