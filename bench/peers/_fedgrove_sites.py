"""fedgrove's sites mode on the demo's task, as a consortium runs it: a real `prefect server`, the project's
deployments (`deployments/prefect.yaml`), a process worker per organisation on its own work pool holding only
its own data file and leaf credentials, the coordinator on its own worker, and the aggregation server as a
process of its own.

The Prefect server is the tests' (`tests/prefect_server.py`: `prefect server start`, UI on) set up as the
README recommends for sites mode: its database on PostgreSQL (a cluster this benchmark starts with the tests'
harness, `tests/postgres_server.py`: PostgreSQL 15, fsync off) and its task-run recorder batched. On Prefect's
default SQLite file five sites and the coordinator writing at once get `database is locked`, and the whole run
then varies from 42 to 272 s for 3 rounds (`docs/benchmarks.md`). The whole run
is timed from `prefect deployment run` to the coordinator's final state: the server, the aggregator and the
workers are already up, as they are at a consortium before a run. Per round: the slowest site's round, from
the results the leaves publish. Memory is not sampled (the processes belong to the workers).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dotenv import dotenv_values

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: the tests' Prefect harness

from aggregator.process import AggregatorProcess, environment_without_fedgrove_settings  # noqa: E402
from fedgrove.demo import DemoOptions, demo_spec, write_demo_sites  # noqa: E402
from tests.prefect_server import (  # noqa: E402
    COORDINATOR_POOL,
    PREFECT_FILE,
    WEEKLY,
    PrefectServer,
    clean_environment,
    site_pool,
)

# Last: it puts bench/ first on the path, where bench/aggregator.py would hide the aggregator package.
from _fedgrove_runs import FedgroveFigures, site_round_seconds, slowest_rounds  # noqa: E402,I001

RUN_TIMEOUT_S = 1800
# The README's settings for a consortium's Prefect server (its database URL is added per run).
RECOMMENDED_SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
                               "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1"}


@contextmanager
def prefect_database_on_postgres() -> Iterator[str]:
    """A PostgreSQL cluster of its own with a `prefect` database that has `pg_trgm`; yields its asyncpg URL."""
    import psycopg

    from tests import postgres_server as pg

    bin_dir, root = pg.postgres_bin_dir(), pg._make_root()
    try:
        created = pg._run([str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", pg.SUPERUSER, "-A", "trust",
                           "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], what="initdb")
        if created.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{created.stdout}{created.stderr}")
        port = pg._start(bin_dir, root)
        try:
            pg.PostgresServer(port=port, root=root).create_database("prefect")
            with psycopg.connect(host=pg.HOST, port=port, user=pg.SUPERUSER, dbname="prefect",
                                 autocommit=True) as connection:
                connection.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            yield f"postgresql+asyncpg://{pg.SUPERUSER}@{pg.HOST}:{port}/prefect"
        finally:
            pg._stop(bin_dir, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sites_mode(scratch: Path, *, rounds: int, sites: int) -> FedgroveFigures:
    root = scratch / "fedgrove-sites"
    root.mkdir(parents=True, exist_ok=True)
    options = DemoOptions(sites=sites, rounds=rounds)
    files = write_demo_sites(root / "data", options, min_records=10)  # the demo's own split (tasks/run_setup.py)
    with prefect_database_on_postgres() as database_url:
        return _sites_mode_on(root, files, options, database_url=database_url)


def _sites_mode_on(root: Path, files: dict[str, Path], options: DemoOptions, *, database_url: str) -> FedgroveFigures:
    names, sites = list(files), options.sites
    server = PrefectServer(root / "prefect", server_env={
        **RECOMMENDED_SERVER_SETTINGS, "PREFECT_API_DATABASE_CONNECTION_URL": database_url}).start()
    aggregator = AggregatorProcess(root / "aggregator", env=environment_without_fedgrove_settings())
    aggregator.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        _deploy(server, names)
        aggregator.start()
        leaves = _branch(aggregator, names, root / "leaves")
        artifacts = root / "runs"
        server.start_workers({COORDINATOR_POOL: {"FEDGROVE_WORK_DIR": str(root / "coordinator"),
                                                 "FEDGROVE_ARTIFACTS": str(artifacts)}})
        server.start_workers({
            site_pool(site): {**leaves[site], "FEDGROVE_SITE_DATA": str(files[site]),
                              "FEDGROVE_WORK_DIR": str(root / f"{site}-scratch"), "FEDGROVE_ARTIFACTS": str(artifacts)}
            for site in names
        })
        spec = demo_spec(None, options).model_dump(mode="json")
        spec["sites"] = names
        run_id = f"bench-sites-{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        flow_run_id = server.run_deployment(WEEKLY, parameters={"spec": spec,
                                                                "run": {"mode": "sites", "run_id": run_id}})
        run = server.wait_for_flow_run(flow_run_id, timeout_s=RUN_TIMEOUT_S)
        wall = time.perf_counter() - started
        if run["state_type"] != "COMPLETED":
            raise RuntimeError(f"sites mode did not complete:\n{server.explain(run)}")
    finally:
        server.stop()
        aggregator.stop()
    summary = json.loads((artifacts / run_id / "summary.json").read_text())
    slowest = slowest_rounds(site_round_seconds(artifacts / run_id))
    return FedgroveFigures(
        mode="sites", wall_s=wall, first_round_s=slowest[0] if slowest else None,
        per_round_s=statistics.median(slowest[1:]) if len(slowest) > 1 else None, rounds_done=len(slowest),
        peak_mb=None, accuracy_test=summary["federated_pooled"]["accuracy_test"], flow_wall_s=summary.get("wall_s"),
        note=f"`prefect server start` on PostgreSQL, task-run recorder batched (the README's settings), {sites} "
             "process workers and a coordinator worker already up; whole run from `prefect deployment run` to the "
             "final state; memory not sampled")


def _deploy(server: PrefectServer, sites: list[str]) -> None:
    for pool in (COORDINATOR_POOL, *(site_pool(site) for site in sites)):
        created = server.prefect("work-pool", "create", pool, "--type", "process")
        if created.returncode != 0:
            raise RuntimeError(f"prefect work-pool create {pool} failed:\n{created.stdout}{created.stderr}")
    deployed = server.prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
    if deployed.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{deployed.stdout}\n{deployed.stderr}")


def _branch(aggregator: AggregatorProcess, sites: list[str], env_dir: Path) -> dict[str, dict[str, str]]:
    """A branch with one leaf per site (`fedgrove branch create --env-dir`); each site's credentials."""
    created = subprocess.run(
        [sys.executable, "-m", "fedgrove_cli", "branch", "create", "--tree", "bench", "--branch", "sites",
         "--leaves", str(len(sites)), *[arg for site in sites for arg in ("--leaf-name", site)],
         "--host", aggregator.url, "--data-dir", str(aggregator.data_dir), "--env-dir", str(env_dir), "--json"],
        capture_output=True, text=True, timeout=120, env=clean_environment(),
    )
    if created.returncode != 0:
        raise RuntimeError(f"fedgrove branch create failed:\n{created.stdout}{created.stderr}")
    branch = json.loads(created.stdout)
    return {leaf["name"]: {key: value for key, value in dotenv_values(env_dir / f"{leaf['name']}.env").items()
                           if value is not None}
            for leaf in branch["leaves"]}
