"""The commands that train: `train` (a spec, every site on this machine), `demo` (the built-in spec), `leaf`
(one organisation's side against any BranchKey server) and `serve` (the weekly deployment from here).

Without a configured Prefect API they start Prefect's temporary server themselves, first, so it boots
while the pipeline's modules import, and stop it at the end (`fedgrove.prefect_ephemeral`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedgrove_cli.console import console, fail

VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also show what the SDKs print and every task run's state.")
]
OutOption = Annotated[str | None, typer.Option(help="Artifact store: a folder or s3://bucket/prefix (default ./runs).")]
RunIdOption = Annotated[str | None, typer.Option(help="Name of the run folder (default: time + random).")]
ResumeOption = Annotated[str | None, typer.Option(
    "--resume", metavar="RUN_ID", help="Continue this run from the last round every site completed.")]


class Split(str, Enum):
    iid = "iid"
    dirichlet = "dirichlet"


class Mode(str, Enum):
    local = "local"
    sites = "sites"


@contextlib.contextmanager
def prefect_api(*, verbose: bool, local_run: bool = False) -> Iterator[None]:
    """Prefect's temporary server when the user configured no Prefect API, and for a local run (`local_run`)
    its embedded aggregator; quiet task-run logs. Both servers start first, so that they boot while the
    pipeline's modules import."""
    from fedgrove.prefect_ephemeral import start_before_prefect_settings, temporary_server_for
    from fedgrove_common.startup_heap import startup_imports

    with contextlib.ExitStack() as cleanup:
        # No collection while the pipeline's modules import; what they made lives as long as the command, so it
        # is frozen after: no later full collection walks it.
        with startup_imports():
            early = start_before_prefect_settings()
            if early is not None:
                cleanup.callback(early.stop)  # also when something below fails before it serves
            if verbose:
                os.environ["FEDGROVE_VERBOSE"] = "true"
            from fedgrove.settings import PipelineSettings

            settings = PipelineSettings()
            if local_run and (aggregator_dir := settings.embedded_aggregator_dir) is not None:
                from aggregator.embedded import launch_ahead

                # The run's branch provisioning takes it over; if the run ends before, it is stopped here.
                cleanup.callback(launch_ahead(aggregator_dir, log=aggregator_dir / "aggregator.log").stop)
            server = temporary_server_for(settings.prefect_ephemeral_database, started=early)
            if server is not None:
                if server.process is None:
                    server.start()
                    cleanup.callback(server.stop)
                console.print(f"Starting Prefect's temporary server on {server.api_url} "
                              f"(in memory: {server.in_memory})", highlight=False, soft_wrap=True)
            import flows.federated_training  # noqa: F401  (the imports the server's boot overlaps)
            # What Prefect imports at the first flow call (~0.7 s), imported here while the server boots.
            import fastapi.encoders  # noqa: F401
            import prefect.utilities.visualization  # noqa: F401

            if not verbose:
                from fedgrove.client_output import route_sdk_output_to_debug_log
                from fedgrove.user_errors import quiet_expected_failures

                # No "Finished in state Completed()" line per task run (1,250 in a 50-round demo); warnings show.
                logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)
                from fedgrove.checkpoints import CheckpointError
                from fedgrove.run_record import ResumeRefused
                from fedgrove.warm_start import WarmStartRefused
                from flows.federated_training import SecureAggregationNeedsEverySite, SiteFlowsFailed
                from flows.leaf_training import NothingToResume, SiteOwnedParameter
                from tasks.provisioning import ProvisioningError
                from tasks.run_setup import SpecNotRunnable
                from tasks.site_results import SiteResultMissing

                route_sdk_output_to_debug_log()
                quiet_expected_failures(also=(SiteFlowsFailed, SiteOwnedParameter, SpecNotRunnable, SiteResultMissing,
                                              SecureAggregationNeedsEverySite, ResumeRefused, ProvisioningError,
                                              WarmStartRefused, NothingToResume, CheckpointError))
        if server is not None:
            cleanup.enter_context(server.serving())
        yield


@contextlib.contextmanager
def round_progress(sites: int, rounds: int) -> Iterator[None]:
    """A progress bar of the federation's rounds: a round counts once every in-process site has finished it
    (they move in step: each waits for the round's aggregate). On the terminal only."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedgrove.progress import add_round_listener

    progress = Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True)
    bar = progress.add_task("rounds", total=rounds)
    done: dict[str, int] = {}  # a resumed run's sites start where they stopped

    def finished(_run: str, site: str, round_number: int, _rounds: int) -> None:
        done[site] = round_number
        progress.update(bar, completed=rounds_every_site_finished(done, sites))

    remove = add_round_listener(finished)
    try:
        with progress:
            yield
    finally:
        remove()


def rounds_every_site_finished(done: dict[str, int], sites: int) -> int:
    """The last round every one of `sites` sites has finished, from each reporting site's last round (0 until
    all have reported)."""
    return min(done.values()) if len(done) >= sites else 0


def print_run_table(summary: dict) -> None:
    """Per site federated vs alone, then the pooled federation and centralised: fits an 80-column terminal
    (losses are in summary.json and the Prefect summary)."""
    from rich import box

    from fedgrove.run_report import DISPLAY, comparison_header, comparison_rows, privacy_line

    names = " and ".join(DISPLAY.get(name, name) for name in summary["headline"])
    rounds = (summary.get("privacy") or {}).get("rounds_run") or summary["rounds"]
    table = Table(title=f"test {names} after {rounds} rounds ({len(summary['sites'])} sites, "
                        f"target {summary['target']!r})", box=box.SIMPLE_HEAD)
    for index, column in enumerate(comparison_header(summary, with_loss=False, short=True)):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for row in comparison_rows(summary, with_loss=False):
        table.add_row(*row)
    console.print(table)
    console.print(f"model inputs: {', '.join(summary['features'])}", highlight=False, soft_wrap=True)
    console.print(f"identical models at every site: {summary['identical_models']}; wall time "
                  f"{summary['wall_s']:.1f} s", highlight=False)
    if line := privacy_line(summary):
        console.print(line, highlight=False, soft_wrap=True)
    for name in ("result.png", "model.pt", "summary.json"):
        console.print(f"{name + ':':<13} {summary['outputs'][name]}", highlight=False, soft_wrap=True)


def _run(spec, run, *, verbose: bool) -> None:  # type: ignore[no-untyped-def]
    from fedgrove.run_record import ResumeRefused, read_run_record
    from fedgrove.settings import PipelineSettings
    from fedgrove.warm_start import WarmStartRefused
    from flows.federated_training import SecureAggregationNeedsEverySite, SiteFlowsFailed, federated_training
    from tasks.provisioning import ProvisioningError
    from tasks.run_setup import SpecNotRunnable

    shown = spec
    if run.resume:
        try:
            shown = spec or read_run_record(PipelineSettings().work_dir / "runs" / run.run_id, run.run_id).spec
        except ResumeRefused as exc:
            fail(str(exc))
    rounds = shown.train.rounds if shown is not None else run.demo.rounds
    sites = len(shown.sites) if shown is not None else run.demo.sites
    try:
        with round_progress(sites, rounds) if run.mode == "local" else contextlib.nullcontext():
            summary = federated_training(spec, run)
    except (SiteFlowsFailed, SecureAggregationNeedsEverySite, SpecNotRunnable, ResumeRefused,
            ProvisioningError, WarmStartRefused) as exc:
        fail(str(exc))
    print_run_table(summary)


def _check_run_ids(**options: str | None) -> None:
    """Refuse a bad --run-id or --resume before anything starts."""
    from fedgrove.run_ids import run_id_problem

    fixes = {"run_id": "pick another run id, such as 2026-q4-readmissions",
             "resume": "give the id of the run to resume: its folder's name under the work folder's runs/"}
    for option, value in options.items():
        problem = run_id_problem(value) if value is not None else None
        if problem is not None:
            fail(f"--{option.replace('_', '-')} {value!r}: {problem} (fix: {fixes[option]})")


def train(
    spec_file: Annotated[Path | None, typer.Option("--spec", help="The federation spec (YAML); with --resume, "
                                                                  "default: the run's own.")] = None,
    out: OutOption = None,
    run_id: RunIdOption = None,
    resume: ResumeOption = None,
    mode: Annotated[Mode, typer.Option(help="local: every site on this machine; sites: each site's own worker "
                                             "(needs a Prefect server and the sites' workers).")] = Mode.local,
    verbose: VerboseOption = False,
) -> None:
    """Train a spec's federation. Locally every site's leaf runs here and reads only its own source."""
    from fedgrove.spec import SpecError, load_spec

    _check_run_ids(run_id=run_id, resume=resume)
    if spec_file is None and resume is None:
        fail("--spec is required: the federation spec (YAML) to train (fix: fedgrove train --spec spec.yaml)")
    if resume is not None and run_id is not None and run_id != resume:
        fail(f"--run-id {run_id} and --resume {resume} name different runs (fix: give --resume alone)")
    try:
        spec = load_spec(spec_file) if spec_file is not None else None
    except SpecError as exc:
        fail(str(exc))
    if out is not None:
        os.environ["FEDGROVE_ARTIFACTS"] = out
    with prefect_api(verbose=verbose, local_run=mode is Mode.local):
        from flows.federated_training import RunOptions

        _run(spec, RunOptions(mode=mode.value, run_id=resume or run_id, resume=resume is not None), verbose=verbose)


def demo(
    sites: Annotated[int | None, typer.Option(help="Number of sites (organisations) [default: 5].")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds (= epochs of the baselines) [default: 50].")]
    = None,
    split: Annotated[Split | None, typer.Option(help="iid, or dirichlet label skew [default: iid].")] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration (with --split dirichlet) "
                                                     "[default: 0.5].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split, the model and the shuffles [default: 0].")]
    = None,
    out: OutOption = None,
    run_id: RunIdOption = None,
    resume: ResumeOption = None,
    verbose: VerboseOption = False,
) -> None:
    """The built-in spec: breast cancer split over sites, 4 features by federated LRT, logistic regression."""
    _check_run_ids(run_id=run_id, resume=resume)
    if out is not None:
        os.environ["FEDGROVE_ARTIFACTS"] = out
    with prefect_api(verbose=verbose, local_run=True):
        from fedgrove.demo import DemoOptions
        from flows.federated_training import RunOptions

        given = {"sites": sites, "rounds": rounds, "split": split.value if split else None, "alpha": alpha,
                 "seed": seed}
        if resume is not None and run_id is not None and run_id != resume:
            fail(f"--run-id {run_id} and --resume {resume} name different runs (fix: give --resume alone)")
        base = _recorded_demo(resume) if resume is not None else DemoOptions()
        try:  # options not given take the defaults, or with --resume the run's own
            options = DemoOptions(**{**base.model_dump(), **{k: v for k, v in given.items() if v is not None}})
        except ValueError as exc:
            fail(str(exc).splitlines()[-1])
        _run(None, RunOptions(run_id=resume or run_id, resume=resume is not None, demo=options), verbose=verbose)


def _recorded_demo(run_id: str):  # type: ignore[no-untyped-def]
    """The demo options a run to resume started with (the defaults for a run that had a spec of its own)."""
    from fedgrove.demo import DemoOptions
    from fedgrove.run_record import ResumeRefused, read_run_record
    from fedgrove.settings import PipelineSettings

    try:
        record = read_run_record(PipelineSettings().work_dir / "runs" / run_id, run_id)
    except ResumeRefused as exc:
        fail(str(exc))
    return record.demo or DemoOptions()


def leaf(
    spec_file: Annotated[Path, typer.Option("--spec", help="The federation spec (YAML), the same at every site.")],
    data: Annotated[str, typer.Option(help="This site's table: a path, an s3:// URL, block:s3-bucket/<block>/<key>, or JSON "
                                           '{"sql": {"url_env": "NAME", "query": "select ..."}}.',
                                      envvar="FEDGROVE_SITE_DATA")],
    env_file: Annotated[Path | None, typer.Option(help="This leaf's credentials (.env); default: the "
                                                       "environment.")] = None,
    site: Annotated[str | None, typer.Option(help="This site's name in the spec (default: LEAF_NAME).")] = None,
    out: OutOption = None,
    run_id: RunIdOption = None,
    verbose: VerboseOption = False,
) -> None:
    """One organisation's leaf against any BranchKey server (hosted or ours): reads only --data."""
    from fedgrove.settings import LeafSettings
    from fedgrove.sources import DataSource
    from fedgrove.spec import SpecError, load_spec

    from fedgrove.sources import SourceError

    _check_run_ids(run_id=run_id)
    try:
        spec = load_spec(spec_file)
        source = DataSource.parse(data)
        credentials = LeafSettings.load(env_file)
    except (SpecError, SourceError, FileNotFoundError) as exc:
        fail(str(exc))
    except ValueError as exc:  # the credentials: pydantic names each missing variable
        fail(f"this leaf's credentials are incomplete: {exc} (fix: set LEAF_ID, LEAF_NAME, LEAF_PASSWORD, TREE_ID, "
             "BRANCH_ID, OWNER_ID and BRANCHKEY_HOST, or pass --env-file)")
    name = site or credentials.leaf_name
    if name not in spec.sites:
        fail(f"site {name!r} is not one of the spec's sites {spec.roster()} (fix: pass --site with one of them, or "
             "list this site in the spec)")
    if out is not None:
        os.environ["FEDGROVE_ARTIFACTS"] = out
    with prefect_api(verbose=verbose):
        from fedgrove.site_config import SiteConfig, shared_artifacts_url
        from fedgrove_cli.leaf_outputs import write_site_model
        from flows.federated_training import new_run_id
        from flows.leaf_training import LeafAssignment, leaf_training

        run = run_id or new_run_id()
        artifacts = shared_artifacts_url(os.environ.get("FEDGROVE_ARTIFACTS"))
        config = SiteConfig(data=source, source_setting="--data", base_dir=Path.cwd(), env_file=env_file,
                            artifacts=artifacts)
        try:
            result = leaf_training(LeafAssignment(spec=spec.shared(), site=name, run_id=run), config).unquote()
        except Exception as exc:
            fail(str(exc))
        paths = write_site_model(spec=spec, run_id=run, artifacts_url=artifacts, site=name)
    from fedgrove.metrics import METRICS
    from fedgrove.run_report import metric

    final, alone = result.federated[-1].test, result.alone[-1].test if result.alone else None
    names = METRICS[spec.task]
    table = Table(title=f"site {name}: test metrics after {spec.train.rounds} rounds")
    for column in ("", *names):
        table.add_column(column, justify="right")
    table.add_row("federated", *(metric(final.get(n)) for n in names))
    if alone is not None:
        table.add_row("alone", *(metric(alone.get(n)) for n in names))
    console.print(table)
    for label, path in paths.items():
        console.print(f"{label + ':':<11} {path}", highlight=False, soft_wrap=True)


def serve(
    cron: Annotated[str, typer.Option(help="When to retrain.")] = "0 3 * * 1",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "Europe/Amsterdam",
) -> None:
    """Serve the weekly `federated-training/weekly` deployment from this machine (needs a Prefect server)."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.federated_training import federated_training

    federated_training.serve(name="weekly", schedules=[CronSchedule(cron=cron, timezone=timezone)])
