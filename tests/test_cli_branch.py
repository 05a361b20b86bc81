"""`fedgrove branch create` as a person at an 80-column terminal runs it, against the real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import select

from aggregator.db import Branch, Leaf
from aggregator.server import ServerThread


def _create(aggregator: ServerThread, *options: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"}
    environment.pop("FEDGROVE_ADMIN_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "fedgrove_cli", "branch", "create", "--tree", "hospitals", "--leaves", "3",
         "--host", aggregator.url, "--data-dir", str(aggregator.settings.data_dir), *options],
        capture_output=True, text=True, env=environment, timeout=60,
    )


def _tokens_in(stdout: str) -> dict[str, str]:
    """leaf id → session token, from the lines that follow the `name id session_token` header."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["name", "id", "session_token"])
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    return {leaf_id: token for _name, leaf_id, token in rows}


def test_every_leafs_id_and_token_are_printed_whole_on_a_narrow_terminal(aggregator: ServerThread) -> None:
    """A table fitted to 80 columns cut the ids and tokens short ("68f4a0a2-…", "XXXXXXBWC1U_Kf8oo…"), and a
    token is shown only once."""
    result = _create(aggregator, "--branch", "narrow")

    assert result.returncode == 0, result.stderr
    tokens = _tokens_in(result.stdout)
    assert len(tokens) == 3 and "…" not in result.stdout
    for leaf_id, token in tokens.items():
        response = httpx.get(f"{aggregator.url}/api/v1/run/{_branch_of(aggregator, leaf_id)}",
                             headers={"Authorization": f"Bearer {leaf_id}:{token}"})
        assert response.status_code == 200, response.text


def _branch_of(aggregator: ServerThread, leaf_id: str) -> str:
    with aggregator.context.sessions() as session:
        return session.get(Leaf, leaf_id).branch_id


def test_env_dir_never_overwrites_another_branchs_credentials(aggregator: ServerThread, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    first = _create(aggregator, "--branch", "first", "--env-dir", str(env_dir),
                    "--leaf-name", "org-1", "--leaf-name", "org-2", "--leaf-name", "org-3")
    assert first.returncode == 0, first.stderr
    saved = (env_dir / "org-1.env").read_text()

    second = _create(aggregator, "--branch", "second", "--env-dir", str(env_dir),
                     "--leaf-name", "org-1", "--leaf-name", "org-2", "--leaf-name", "org-3")

    assert second.returncode == 1
    assert second.stdout == ""
    assert " ".join(second.stderr.split()) == (
        f"error: {env_dir / 'org-1.env'} exists and may hold another branch's credentials; nothing was created "
        "(fix: choose another --env-dir, or move the file away)"
    )
    assert (env_dir / "org-1.env").read_text() == saved
    with aggregator.context.sessions() as session:
        assert session.scalars(select(Branch.name)).all() == ["first"]


def test_run_start_pause_and_stop_say_what_the_run_now_does(aggregator: ServerThread) -> None:
    created = _create(aggregator, "--branch", "runs", "--json")
    assert created.returncode == 0, created.stderr
    branch_id = json.loads(created.stdout)["branch_id"]
    said = []
    for command in ("pause", "start", "stop", "start"):
        result = subprocess.run(
            [sys.executable, "-m", "fedgrove_cli", "run", command, branch_id, "--host", aggregator.url,
             "--data-dir", str(aggregator.settings.data_dir)],
            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        said.append(result.stdout.strip())
    assert said == [f"branch {branch_id}: run 1 is now paused (uploads wait; the round is kept)",
                    f"branch {branch_id}: run 1 is now started (leaves may upload)",
                    f"branch {branch_id}: run 1 is now stopped (a later start begins a new run)",
                    f"branch {branch_id}: run 2 is now started (leaves may upload)"]
