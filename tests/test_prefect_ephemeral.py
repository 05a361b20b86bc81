"""`fedgrove demo` on Prefect's ephemeral server: an in-memory database unless Prefect is configured.

Each case runs in a fresh process, because Prefect reads its settings once, at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedgrove.prefect_ephemeral import IN_MEMORY_URL

ROOT = Path(__file__).resolve().parents[1]
PREFECT_VARIABLES = ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                     "PREFECT_PROFILES_PATH", "PREFECT_HOME", "FEDGROVE_PREFECT_EPHEMERAL_DATABASE")


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PREFECT_VARIABLES and not k.startswith("PREFECT__")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def chosen(tmp_path: Path, mode: str, **extra: str) -> dict[str, str | None]:
    code = (
        "import json, os\n"
        "from fedgrove.prefect_ephemeral import choose_ephemeral_database\n"
        f"url = choose_ephemeral_database({mode!r})\n"
        "print(json.dumps({'returned': url, 'env': os.environ.get('PREFECT_SERVER_DATABASE_CONNECTION_URL')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(tmp_path, **extra), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unconfigured_prefect_gets_the_in_memory_database(tmp_path: Path) -> None:
    assert chosen(tmp_path, "memory") == {"returned": IN_MEMORY_URL, "env": IN_MEMORY_URL}


def test_file_mode_leaves_prefect_alone(tmp_path: Path) -> None:
    assert chosen(tmp_path, "file") == {"returned": None, "env": None}


def test_a_configured_prefect_api_is_left_alone(tmp_path: Path) -> None:
    assert chosen(tmp_path, "memory", PREFECT_API_URL="http://127.0.0.1:4200/api") == {"returned": None, "env": None}


def test_a_database_of_the_users_own_is_left_alone(tmp_path: Path) -> None:
    own = f"sqlite+aiosqlite:///{tmp_path / 'mine.db'}"
    assert chosen(tmp_path, "memory", PREFECT_SERVER_DATABASE_CONNECTION_URL=own) == {"returned": None, "env": own}


def test_a_database_in_the_active_profile_is_left_alone(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\n'
                        f'PREFECT_SERVER_DATABASE_CONNECTION_URL = "sqlite+aiosqlite:///{tmp_path / "p.db"}"\n')
    assert chosen(tmp_path, "memory", PREFECT_PROFILES_PATH=str(profiles)) == {"returned": None, "env": None}


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "database_files"), [("memory", False), ("file", True)])
def test_the_demo_runs_on_the_ephemeral_server(tmp_path: Path, mode: str, database_files: bool) -> None:
    """`make demo`'s path, not the test harness: no Prefect configured, Prefect starts its own server, whose
    database is in memory by default and `$PREFECT_HOME/prefect.db` with FEDGROVE_PREFECT_EPHEMERAL_DATABASE=file."""
    command = [str(Path(sys.executable).with_name("fedgrove")), "demo", "--organisations", "2", "--rounds", "2",
               "--out", str(tmp_path / "runs"), "--run-id", "ephemeral"]
    env = clean_env(tmp_path, FEDGROVE_WORK_DIR=str(tmp_path / "work"), FEDGROVE_PREFECT_EPHEMERAL_DATABASE=mode)
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ephemeral" / "summary.json").read_text())
    assert (summary["rounds"], sorted(summary["federated"])) == (2, ["org-1", "org-2"])
    assert "Starting temporary server" in done.stderr + done.stdout
    assert bool(list((tmp_path / "prefect-home").glob("prefect.db*"))) is database_files
