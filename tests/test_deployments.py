"""`deployments/prefect.yaml` deployed with `prefect deploy` to a real Prefect server and run by real workers.

The server, the work pools, the deployments, the coordinator's worker and one weekly run are session fixtures
(`tests/prefect_server.py`); the sites tests add a real aggregator (`python -m aggregator`), a branch made
with `fedgrove branch create`, and one worker per site holding only that site's credentials and data source.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from dotenv import dotenv_values

from tests.aggregator_process import AggregatorProcess
from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import DataSource, read_source
from fedgrove.split import split_table, write_split
from tests.data_sets import affairs
from tests.prefect_server import (
    COORDINATOR_POOL,
    PREFECT_FILE,
    REPO_ROOT,
    SITES,
    TERMINAL_STATES,
    WEEKLY,
    WEEKLY_PARAMETERS,
    CoordinatorWorker,
    ManagedProcess,
    PrefectServer,
    WeeklyRun,
    clean_environment,
    site_pool,
)

LEAF_CREDENTIALS = ("LEAF_ID", "LEAF_NAME", "LEAF_SESSION_TOKEN", "LEAF_PASSWORD", "TREE_ID", "BRANCH_ID",
                    "OWNER_ID", "BRANCHKEY_HOST")
OUTPUT_FILES = ("model.pt", "model.json", "result.png", "epochs.csv", "summary.json")
SCHEDULER_TIMEOUT_S = 90.0  # the recent-deployments loop runs every 5 s
SITES_TIMEOUT_S = 420.0


def test_prefect_yaml_names_every_deployment_and_holds_no_credentials() -> None:
    config = yaml.safe_load(PREFECT_FILE.read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"weekly", *SITES}
    assert deployments["weekly"]["entrypoint"] == "flows/federated_training.py:federated_training"
    for site in SITES:
        assert deployments[site]["entrypoint"] == "flows/leaf_training.py:leaf_training"
        assert deployments[site]["work_pool"]["name"] == site_pool(site)
        assert not deployments[site].get("work_pool", {}).get("job_variables"), "credentials come from the worker"
    for entry in config["deployments"]:
        path, function = entry["entrypoint"].split(":")
        assert (REPO_ROOT / path).is_file() and f"def {function}(" in (REPO_ROOT / path).read_text()
    text = PREFECT_FILE.read_text()
    assert not [name for name in LEAF_CREDENTIALS if f"{name}:" in text or f"{name}=" in text]


@pytest.mark.slow
def test_deploy_creates_a_weekly_schedule_in_amsterdam_time_and_the_scheduler_fills_it(
    prefect_server: PrefectServer, prefect_deployed: subprocess.CompletedProcess[str]
) -> None:
    weekly = prefect_server.deployment(WEEKLY)
    assert weekly["work_pool_name"] == COORDINATOR_POOL
    assert weekly["entrypoint"] == "flows/federated_training.py:federated_training"
    assert weekly["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
    ]
    [schedule] = weekly["schedules"]
    assert schedule["active"] is True
    assert schedule["schedule"]["cron"] == "0 3 * * 1"
    assert schedule["schedule"]["timezone"] == "Europe/Amsterdam"

    # With SQLAlchemy 2.1 Prefect 3.8.6's scheduler fails on every loop and never creates these runs.
    scheduled = poll_scheduled_runs(prefect_server, weekly["id"], at_least=3)
    amsterdam = ZoneInfo("Europe/Amsterdam")
    for run in scheduled:
        start = datetime.fromisoformat(run["expected_start_time"])
        assert start > datetime.now(UTC)
        local = start.astimezone(amsterdam)
        assert (local.isoweekday(), local.hour, local.minute) == (1, 3, 0), local
        assert run["work_pool_name"] == COORDINATOR_POOL


def poll_scheduled_runs(server: PrefectServer, deployment_id: str, *, at_least: int) -> list[dict]:
    deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
    while True:
        runs = server.flow_runs(deployment_id={"any_": [deployment_id]}, state={"type": {"any_": ["SCHEDULED"]}})
        runs = [run for run in runs if run["auto_scheduled"]]
        if len(runs) >= at_least:
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the scheduler created {len(runs)} runs of {WEEKLY} in {SCHEDULER_TIMEOUT_S} s, expected at least "
                f"{at_least} (is SQLAlchemy < 2.1? see docs/dependencies.md)"
            )
        time.sleep(1)


@pytest.mark.slow
def test_every_site_has_its_own_leaf_deployment_on_its_own_pool(
    prefect_server: PrefectServer, prefect_deployed: subprocess.CompletedProcess[str]
) -> None:
    for site in SITES:
        deployment = prefect_server.deployment(f"leaf-training/{site}")
        assert deployment["work_pool_name"] == site_pool(site)
        assert deployment["entrypoint"] == "flows/leaf_training.py:leaf_training"
        assert deployment["schedules"] == []
        assert deployment["job_variables"] == {}
        assert deployment["global_concurrency_limit"]["limit"] == 1  # one run per branch at a time


@pytest.mark.slow
def test_a_manual_weekly_run_completes_on_the_coordinator_pool_with_its_artifacts(
    prefect_server: PrefectServer, weekly_run: WeeklyRun
) -> None:
    run = weekly_run.flow_run
    assert run["work_pool_name"] == COORDINATOR_POOL
    assert run["parameters"] == WEEKLY_PARAMETERS
    artifacts = {
        artifact["key"]: artifact
        for artifact in prefect_server.api(
            "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
        )
    }
    assert {key: artifact["type"] for key, artifact in artifacts.items()} == {
        "federated-training-rounds": "table",
        "federated-training-summary": "markdown",
        "federated-training-result-plot": "markdown",  # a link artifact is stored as markdown
        "federated-training-progress": "progress",
        "model-registry": "table",
        "model-promotion": "markdown",
    }
    rounds = json.loads(artifacts["federated-training-rounds"]["data"])
    assert sorted((row["site"], row["epoch"]) for row in rounds) == [
        ("all", 1), ("all", 2), ("site-1", 1), ("site-1", 2), ("site-2", 1), ("site-2", 2)
    ]
    assert artifacts["federated-training-progress"]["data"] == 100
    assert artifacts["federated-training-result-plot"]["data"].startswith("[result.png](")
    run_id = WEEKLY_PARAMETERS["run"]["run_id"]
    assert run_id in artifacts["federated-training-summary"]["data"]
    outputs = weekly_run.artifacts / run_id
    for name in OUTPUT_FILES:
        assert (outputs / name).stat().st_size > 0, name
    summary = json.loads((outputs / "summary.json").read_text())
    assert (summary["rounds"], sorted(summary["sites"])) == (2, ["site-1", "site-2"])
    registry = json.loads((weekly_run.artifacts / "registry" / "index.json").read_text())
    assert (registry["latest"], registry["runs"][run_id]["status"]) == (run_id, "completed")
    assert run_id in json.dumps(json.loads(artifacts["model-registry"]["data"]))
    leaf_flow_id = prefect_server.api("GET", "/flows/name/leaf-training")["id"]
    subflows = prefect_server.flow_runs(parent_flow_run_id={"any_": [run["id"]]})
    leaves = [child for child in subflows if child["flow_id"] == leaf_flow_id]
    assert [child["state_type"] for child in leaves] == ["COMPLETED", "COMPLETED"]


SITE_NAMES = SITES[:2]
SPEC = {"target": "affair", "exclude": ["patient_id"], "select": {"k": 4}, "train": {"rounds": 2},
        "sites": list(SITE_NAMES)}


@pytest.fixture
def site_aggregator(tmp_path: Path) -> Iterator[AggregatorProcess]:
    aggregator = AggregatorProcess(tmp_path / "aggregator")
    aggregator.data_dir.mkdir()
    aggregator.start()
    try:
        yield aggregator
    finally:
        aggregator.stop()


@pytest.fixture
def site_branch(site_aggregator: AggregatorProcess, tmp_path: Path) -> dict:
    """A branch with one leaf per site, made with `fedgrove branch create --env-dir`; each leaf carries
    `credentials`, the variables of the .env file the CLI wrote for it."""
    env_dir = tmp_path / "leaves"
    created = subprocess.run(
        [sys.executable, "-m", "fedgrove_cli", "branch", "create", "--tree", "hospitals", "--branch", "sites",
         "--leaves", str(len(SITE_NAMES)), *[arg for site in SITE_NAMES for arg in ("--leaf-name", site)],
         "--host", site_aggregator.url, "--data-dir", str(site_aggregator.data_dir), "--env-dir", str(env_dir),
         "--json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean_environment(),
    )
    assert created.returncode == 0, created.stdout + created.stderr
    branch = json.loads(created.stdout)
    for leaf in branch["leaves"]:
        values = dotenv_values(env_dir / f"{leaf['name']}.env")
        leaf["credentials"] = {key: value for key, value in values.items() if value is not None}
    return branch


@pytest.fixture
def site_files(tmp_path: Path) -> dict[str, Path]:
    """Each site's own table, in a folder of its own: the affairs survey with string categories and holes."""
    parts = split_table(affairs(), target="affair", sites=len(SITE_NAMES), split="dirichlet", seed=1)
    files = {}
    for site, part in zip(SITE_NAMES, parts.values(), strict=True):
        files[site] = write_split({"patients": part}, tmp_path / f"{site}-private")["patients"]
    return files


@pytest.fixture
def site_workers(
    prefect_server: PrefectServer, coordinator_worker: CoordinatorWorker, site_branch: dict,
    site_files: dict[str, Path], tmp_path: Path,
) -> Iterator[list[ManagedProcess]]:
    """One worker per site on its own pool, holding only its own leaf's credentials and its own data source.
    The sites publish their results to the store the coordinator reads (the consortium's shared folder)."""
    workers = prefect_server.start_workers({
        site_pool(site): {**leaf["credentials"], "FEDGROVE_SITE_DATA": str(site_files[site]),
                          "FEDGROVE_WORK_DIR": str(tmp_path / f"{site}-scratch"),
                          "FEDGROVE_ARTIFACTS": str(coordinator_worker.artifacts)}
        for site, leaf in zip(SITE_NAMES, site_branch["leaves"], strict=True)
    })
    try:
        yield workers
    finally:
        prefect_server.stop_workers(workers)


def simulated(site_files: dict[str, Path]):  # type: ignore[no-untyped-def]
    """The same spec in memory over the same files, and how many exchanges its preprocessing took."""
    from fedgrove.federated_preprocessing import preprocessing_protocol
    from fedgrove.lockstep import run_in_lockstep
    from fedgrove.spec import FederationSpec

    spec = FederationSpec.model_validate({**SPEC, "sites": {s: {"data": str(p)} for s, p in site_files.items()}})
    tables = {site: table_for_spec(read_source(DataSource(data=str(path))), spec, site)
              for site, path in site_files.items()}
    _, steps = run_in_lockstep({site: preprocessing_protocol(spec=spec, site=site, table=tables[site])
                                for site in spec.roster()})
    return simulate(spec, tables, centralised=False), len(steps)


@pytest.mark.slow
def test_sites_mode_runs_each_site_on_its_own_pool_with_its_own_data_and_credentials(
    prefect_server: PrefectServer, coordinator_worker: CoordinatorWorker, site_aggregator: AggregatorProcess,
    site_branch: dict, site_files: dict[str, Path], site_workers: list[ManagedProcess], tmp_path: Path,
) -> None:
    tokens = [leaf["session_token"] for leaf in site_branch["leaves"]]
    run_id = f"sites-{uuid.uuid4().hex[:8]}"
    flow_run_id = prefect_server.run_deployment(WEEKLY, parameters={"spec": SPEC,
                                                                    "run": {"mode": "sites", "run_id": run_id}})
    run = prefect_server.wait_for_flow_run(flow_run_id, timeout_s=SITES_TIMEOUT_S)
    assert run["state_type"] == "COMPLETED", prefect_server.explain(run)

    outputs = coordinator_worker.artifacts / run_id
    seen_by_prefect = json.dumps(run) + prefect_server.flow_run_logs(run["id"])
    for site, leaf in zip(SITE_NAMES, site_branch["leaves"], strict=True):
        deployment = prefect_server.deployment(f"leaf-training/{site}")
        [leaf_run] = prefect_server.flow_runs(deployment_id={"any_": [deployment["id"]]})
        assert leaf_run["state_type"] == "COMPLETED", prefect_server.explain(leaf_run)
        assert leaf_run["work_pool_name"] == site_pool(site)
        assert set(leaf_run["parameters"]) == {"assignment"}, "the coordinator sends the assignment alone"
        assert leaf_run["parameters"]["assignment"]["site"] == site
        assert leaf_run["parameters"]["assignment"]["spec"]["sites"] == {s: None for s in SITE_NAMES}
        published = json.loads((outputs / f"site-{site}.json").read_text())
        assert published["leaf_name"] == leaf["name"], "each leaf reads its own worker's credentials"
        seen_by_prefect += json.dumps(leaf_run) + prefect_server.flow_run_logs(leaf_run["id"])
    assert not [token for token in tokens if token in seen_by_prefect], "a session token reached Prefect"
    assert str(tmp_path) not in seen_by_prefect, "a site's path reached Prefect"
    assert "-private" not in seen_by_prefect

    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["mode"] == "sites" and summary["centralised"] is None
    assert set(summary["sites"]) == set(SITE_NAMES) and summary["identical_models"] is True
    for name in OUTPUT_FILES:
        assert (outputs / name).stat().st_size > 0, name
    simulation, exchanges = simulated(site_files)
    for result in simulation.results:
        got = summary["sites"][result.site]["federated"]
        assert got["loss_test"] == pytest.approx(result.federated[-1].test.get("loss"), rel=1e-5)
    card = json.loads((outputs / "model.json").read_text())
    assert card["preprocessing"]["selected"] == simulation.results[0].preprocessing.selected
    completed = site_aggregator.admin("GET", f"/branches/{site_branch['branch_id']}")["aggregations_completed"]
    assert completed == exchanges + SPEC["train"]["rounds"]  # preprocessing's exchanges, then the rounds


@pytest.mark.slow
def test_a_site_parameter_set_by_the_caller_is_refused_by_the_leaf_naming_it(
    prefect_server: PrefectServer, site_branch: dict, site_workers: list[ManagedProcess],
) -> None:
    assignment = {"spec": SPEC, "site": SITE_NAMES[0], "run_id": "refused"}
    flow_run_id = prefect_server.run_deployment(
        f"leaf-training/{SITE_NAMES[0]}",
        parameters={"assignment": assignment, "site": {"data": {"data": "/srv/other-hospital/patients.csv"}}},
    )
    run = prefect_server.wait_for_flow_run(flow_run_id, timeout_s=180)
    assert run["state_type"] == "FAILED"
    refusal = "parameter 'site' was set by whoever started this run, not by this site's own deployment"
    assert refusal in prefect_server.wait_for_log(run["id"], refusal)


KILLED_RUN = "killed-on-its-worker"
KILL_AFTER_ROUND, ROUNDS_KILLED = 20, 30


@pytest.mark.slow
def test_a_coordinator_run_killed_on_its_worker_resumes_when_retried_as_the_ui_does(
    prefect_server: PrefectServer, coordinator_worker: CoordinatorWorker
) -> None:
    """SIGKILL to the coordinator's flow-run process (and the aggregator it started) once both sites have a
    checkpoint of round 20 of 30; the worker reports it crashed. Then the UI's Retry: the same call the UI makes
    (`set_state` AwaitingRetry, not forced). The worker runs it again (run count 2), it resumes by itself, and
    its model equals the same federation run uninterrupted in memory."""
    import numpy as np
    import psutil
    import torch

    from fedgrove.demo import DemoOptions, demo_spec

    parameters = {"run": {"run_id": KILLED_RUN, "init_from": "none",
                          "demo": {"sites": 2, "rounds": ROUNDS_KILLED}}}
    flow_run_id = prefect_server.run_deployment(WEEKLY, parameters=parameters)
    run_dir = coordinator_worker.work_dir / "runs" / KILLED_RUN
    checkpoints = [run_dir / "leaves" / KILLED_RUN / site / "checkpoints" for site in SITE_NAMES]
    deadline = time.monotonic() + SITES_TIMEOUT_S
    while not all(any(int(path.stem.split("-")[1]) >= KILL_AFTER_ROUND for path in folder.glob("round-*.npz"))
                  for folder in checkpoints):
        run = prefect_server.api("GET", f"/flow_runs/{flow_run_id}")
        assert run["state_type"] not in TERMINAL_STATES, prefect_server.explain(run)
        assert time.monotonic() < deadline, prefect_server.explain(run)
        time.sleep(0.05)
    flow_processes = coordinator_worker.worker.family()[1:]  # the worker itself stays
    assert flow_processes, coordinator_worker.worker.tail()
    for process in flow_processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(flow_processes, timeout=30)
    crashed = prefect_server.wait_for_flow_run(flow_run_id, timeout_s=120)
    assert crashed["state_type"] == "CRASHED", prefect_server.explain(crashed)
    assert not (coordinator_worker.artifacts / KILLED_RUN / "model.pt").exists()

    retry = prefect_server.api("POST", f"/flow_runs/{flow_run_id}/set_state", {
        "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}, "force": False})
    assert retry["status"] == "ACCEPT", retry
    deadline = time.monotonic() + SITES_TIMEOUT_S
    while (run := prefect_server.api("GET", f"/flow_runs/{flow_run_id}"))["run_count"] < 2 or \
            run["state_type"] not in TERMINAL_STATES:
        assert time.monotonic() < deadline, prefect_server.explain(run)
        time.sleep(1)
    assert run["state_type"] == "COMPLETED", prefect_server.explain(run)
    assert run["run_count"] == 2
    assert f"resuming run {KILLED_RUN}" in prefect_server.wait_for_log(flow_run_id, f"resuming run {KILLED_RUN}")

    data = run_dir / "data"
    spec = demo_spec({site: data / f"{site}.csv" for site in SITE_NAMES}, DemoOptions(sites=2, rounds=ROUNDS_KILLED))
    uninterrupted = simulate(spec, {site: table_for_spec(read_source(source), spec, site)
                                    for site, source in spec.sites.items()})
    model = torch.load(coordinator_worker.artifacts / KILLED_RUN / "model.pt", weights_only=True)
    for got, expected in zip((layer.numpy() for layer in model.values()), uninterrupted.parameters, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_worse_weekly_run_is_registered_but_production_stays_and_says_why(
    prefect_server: PrefectServer, coordinator_worker: CoordinatorWorker, weekly_run: WeeklyRun, tmp_path: Path
) -> None:
    """The weekly deployment run a second time, made worse on purpose (one round at a learning rate of 1e-4,
    from scratch): it completes and is registered, production stays where it was, its markdown artifact and
    its log say why, the not-promoted event reaches the server for the alert, and `fedgrove models list`
    shows both runs."""
    from fedgrove.demo import DemoOptions, demo_spec, write_demo_sites
    from fedgrove.registry import Registry
    from fedgrove.registry_store import LocalIndexStore
    from tasks.registry_events import NOT_PROMOTED

    registry = Registry(LocalIndexStore(coordinator_worker.artifacts))
    before = registry.index()
    assert before.production is not None and weekly_run.flow_run["state_type"] == "COMPLETED"
    options = DemoOptions(sites=2, rounds=1)
    worse = demo_spec(write_demo_sites(tmp_path / "data", options, min_records=10), options)
    worse = worse.model_copy(update={"train": worse.train.model_copy(update={"learning_rate": 1e-4})})
    flow_run_id = prefect_server.run_deployment(WEEKLY, parameters={
        "spec": worse.model_dump(mode="json"), "run": {"run_id": "weekly-worse", "init_from": "none"}})
    run = prefect_server.wait_for_flow_run(flow_run_id, timeout_s=SITES_TIMEOUT_S)
    assert run["state_type"] == "COMPLETED", prefect_server.explain(run)

    after = registry.index()
    assert (after.production, after.latest) == (before.production, "weekly-worse")
    assert after.runs["weekly-worse"].status == "completed"
    [promotion] = prefect_server.api("POST", "/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": ["model-promotion"]}}})
    assert promotion["data"].startswith(
        f"## Not promoted: production stays: run weekly-worse\n\nrun weekly-worse was not promoted, production "
        f"stays on run {before.production}: pooled accuracy_test "), promotion["data"]
    reason = promotion["data"].split("\n\n")[1]
    assert f"model registry: {reason}" in prefect_server.wait_for_log(flow_run_id, f"model registry: {reason}")
    deadline = time.monotonic() + 60
    while not (events := [event for event in prefect_server.api("POST", "/events/filter", {
                              "filter": {"event": {"name": [NOT_PROMOTED]}}, "limit": 50})["events"]
                          if event["event"] == NOT_PROMOTED
                          and event["resource"]["prefect.resource.id"] == "fedgrove.run.weekly-worse"]):
        assert time.monotonic() < deadline, "no not-promoted event for run weekly-worse reached the server"
        time.sleep(1)
    assert events[0]["payload"]["reason"] == reason
    listed = subprocess.run([sys.executable, "-m", "fedgrove_cli", "models", "list", "--artifacts",
                             str(coordinator_worker.artifacts)], capture_output=True, text=True, timeout=120,
                            env={**clean_environment(), "COLUMNS": "200"}, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if "weekly-" in line}
    assert {"weekly-e2e", "weekly-worse"} <= set(rows)
    assert "latest" in rows["weekly-worse"] and "production" not in rows["weekly-worse"]
