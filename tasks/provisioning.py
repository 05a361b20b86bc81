"""Where the leaves federate: the embedded aggregator, our server elsewhere, or a hosted BranchKey branch.

- no BRANCHKEY_HOST: start the aggregator as a child process on a free loopback port for the run (a process of
  its own: in a thread it shared the interpreter lock with the leaves) and create a branch;
- BRANCHKEY_HOST and FEDGROVE_ADMIN_TOKEN: create a branch on that aggregator through its admin API;
- FEDGROVE_LEAF_ENV_DIR: use the `<site>.env` credentials found there (e.g. a hosted BranchKey branch created
  in its dashboard).
Each leaf gets a `.env` file (mode 0600) that only its own flow reads; no token passes through a parameter.
Federated preprocessing needs no branch setting: every field it sends ends in `_sum`, which any BranchKey
server adds up.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger

from aggregator.embedded import AdminClient, AggregatorProcess
from fedgrove.settings import PipelineSettings, write_leaf_env


class ProvisioningError(RuntimeError):
    pass


@dataclass(frozen=True)
class Federation:
    host: str
    branch_id: str | None
    env_files: dict[str, Path]


@contextmanager
def provide_branch(
    settings: PipelineSettings,
    *,
    sites: list[str],
    run_id: str,
    credentials_dir: Path,
    branch_options: dict | None = None,
) -> Iterator[Federation]:
    logger = get_run_logger()
    if settings.leaf_env_dir is not None:
        env_files = {site: settings.leaf_env_dir / f"{site}.env" for site in sites}
        missing = [str(path) for path in env_files.values() if not path.is_file()]
        if missing:
            raise ProvisioningError(
                f"FEDGROVE_LEAF_ENV_DIR={settings.leaf_env_dir} lacks {', '.join(missing)} "
                "(fix: one <site>.env per site, as `fedgrove branch create --env-dir` writes)"
            )
        yield Federation(host=settings.branchkey_host or "", branch_id=None, env_files=env_files)
        return
    server: AggregatorProcess | None = None
    if settings.branchkey_host:
        if settings.admin_token is None:
            raise ProvisioningError(
                f"BRANCHKEY_HOST={settings.branchkey_host} is set but FEDGROVE_ADMIN_TOKEN is not "
                "(fix: set the aggregator's admin token, or FEDGROVE_LEAF_ENV_DIR with the leaves' credentials)"
            )
        host, token = settings.branchkey_host, settings.admin_token.get_secret_value()
    else:
        data_dir = settings.work_dir / "aggregator"
        server = AggregatorProcess(data_dir, log=data_dir / "aggregator.log").start()
        host, token = server.url, server.admin_token
        logger.info("started the embedded aggregator on %s (log: %s)", host, server.log)
    try:
        with AdminClient(host, token, verify=settings.verify_ssl) as admin:
            created = admin.create_branch(
                tree="fedgrove",
                # A run id may be used again (askanna.yml's fixed one, run twice in one checkout) and the
                # embedded aggregator's branches outlive a run: each run gets a branch of its own.
                branch=f"run-{run_id}-{secrets.token_hex(3)}",
                leaves=len(sites),
                leaf_names=sites,
                **(branch_options or {}),
            )
        logger.info("created branch %s with %d leaves", created["branch_id"], len(sites))
        env_files = {
            leaf["name"]: write_leaf_env(credentials_dir / f"{leaf['name']}.env", leaf, host)
            for leaf in created["leaves"]
        }
        yield Federation(host=host, branch_id=created["branch_id"], env_files=env_files)
    finally:
        shutil.rmtree(credentials_dir, ignore_errors=True)
        if server is not None:
            server.stop()
