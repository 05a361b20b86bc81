"""Where the leaves federate: the embedded aggregator, our server elsewhere, or a hosted BranchKey branch.

- no BRANCHKEY_HOST: start the aggregator as a child process on a free loopback port for the run (a process of
  its own: in a thread it shared the interpreter lock with the leaves), or take over the one the command
  launched ahead (`aggregator.embedded.launch_ahead`), and create a branch;
- BRANCHKEY_HOST and FEDGROVE_ADMIN_TOKEN: create a branch on that aggregator through its admin API;
- FEDGROVE_LEAF_ENV_DIR: use the `<site>.env` credentials found there (e.g. a hosted BranchKey branch created
  in its dashboard).
Each leaf gets a `.env` file (mode 0600) that only its own flow reads; no token passes through a parameter.
The branch's credentials stay in the run's folder until the run finishes, so that a resumed run finds its
branch again (the embedded aggregator keeps its state in its data folder, but listens on a new port).
Federated preprocessing needs no branch setting: every field it sends ends in `_sum`, which any BranchKey
server adds up.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger

from aggregator.embedded import AdminApiError, AdminClient, AggregatorProcess, take_launched
from fedgrove.settings import PipelineSettings, write_leaf_env


BRANCH_FILE = "branch.json"


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
    resume: bool = False,
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
        data_dir = settings.embedded_aggregator_dir
        assert data_dir is not None  # neither BRANCHKEY_HOST nor FEDGROVE_LEAF_ENV_DIR
        server = take_launched(data_dir) or AggregatorProcess(data_dir, log=data_dir / "aggregator.log").launch()
        server.wait_until_ready()
        host, token = server.url, server.admin_token
        logger.info("started the embedded aggregator on %s (log: %s)", host, server.log)
    try:
        with AdminClient(host, token, verify=settings.verify_ssl) as admin:
            if resume:
                created = _created_branch(credentials_dir, run_id=run_id)
                _require_branch(admin, created["branch_id"], run_id=run_id, host=host)
            else:
                created = admin.create_branch(
                    tree="fedgrove",
                    # A run id may be used again (askanna.yml's fixed one, run twice in one checkout) and the
                    # embedded aggregator's branches outlive a run: each run gets a branch of its own.
                    branch=f"run-{run_id}-{secrets.token_hex(3)}",
                    leaves=len(sites),
                    leaf_names=sites,
                    **(branch_options or {}),
                )
                _write_private(credentials_dir / BRANCH_FILE, json.dumps(created))
        logger.info("%s branch %s with %d leaves", "resumed" if resume else "created", created["branch_id"], len(sites))
        env_files = {
            leaf["name"]: write_leaf_env(credentials_dir / f"{leaf['name']}.env", leaf, host)
            for leaf in created["leaves"]
        }
        yield Federation(host=host, branch_id=created["branch_id"], env_files=env_files)
    finally:
        if server is not None:
            server.stop()


def forget_credentials(credentials_dir: Path) -> None:
    """The run finished: its branch's credentials are of no more use."""
    shutil.rmtree(credentials_dir, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _created_branch(credentials_dir: Path, *, run_id: str) -> dict:
    path = credentials_dir / BRANCH_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"run {run_id} cannot resume: its branch's credentials {path} are gone or cannot be "
                                f"read ({exc.__class__.__name__}) (fix: start the run again without --resume)") from exc


def _require_branch(admin: AdminClient, branch_id: str, *, run_id: str, host: str) -> None:
    try:
        admin.branch_status(branch_id)
    except AdminApiError as exc:
        raise ProvisioningError(f"run {run_id} cannot resume: the aggregator at {host} no longer has its branch "
                                f"{branch_id} ({exc}); the aggregator's state of the run is gone (fix: start the run "
                                "again without --resume)") from exc
