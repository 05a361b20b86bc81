"""Run ids: safe file names that never collide with the registry's pointers, refused with one clear line
before anything starts (no Prefect server, no aggregator, no folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from fedgrove.run_ids import run_id_problem
from flows.federated_training import RunOptions


@pytest.mark.parametrize("value", ["2026-q4-readmissions", "a", "run.2", "Production", "x" * 64])
def test_a_run_id_of_safe_characters_is_taken(value: str) -> None:
    assert run_id_problem(value) is None


@pytest.mark.parametrize(("value", "problem"), [
    ("a/b", "expected 1-64 characters from [A-Za-z0-9._-], not '.' or '..'"),
    ("..", "expected 1-64 characters from [A-Za-z0-9._-], not '.' or '..'"),
    ("", "expected 1-64 characters from [A-Za-z0-9._-], not '.' or '..'"),
    ("x" * 65, "expected 1-64 characters from [A-Za-z0-9._-], not '.' or '..'"),
    ("production", "'production' already means the registry's production run, so a run of that id could never "
                   "be named"),
    ("latest", "'latest' already means the registry's newest completed run, so a run of that id could never be "
               "named"),
    ("none", "'none' already means a training that starts from scratch (init_from), so a run of that id could "
             "never be named"),
])
def test_a_run_id_that_could_not_name_its_run_is_refused(value: str, problem: str) -> None:
    assert run_id_problem(value) == problem


def test_a_flow_runs_parameters_refuse_it_too() -> None:
    """A deployment's `run` parameter reaches the flow without the CLI."""
    with pytest.raises(ValidationError, match=r"run id 'latest': 'latest' already means the registry's newest "
                                              r"completed run, so a run of that id could never be named \(fix: "
                                              r"pick another run id, such as 2026-q4-readmissions\)"):
        RunOptions(run_id="latest")
    assert RunOptions(run_id="weekly-7").run_id == "weekly-7"


@pytest.mark.parametrize(("arguments", "error"), [
    (["train", "--spec", "fedgrove.yaml", "--run-id", "a/b"],
     "error: --run-id 'a/b': expected 1-64 characters from [A-Za-z0-9._-], not '.' or '..' (fix: pick another "
     "run id, such as 2026-q4-readmissions)"),
    (["demo", "--run-id", "production"],
     "error: --run-id 'production': 'production' already means the registry's production run, so a run of that id "
     "could never be named (fix: pick another run id, such as 2026-q4-readmissions)"),
    (["train", "--resume", ".."],
     "error: --resume '..': expected 1-64 characters from [A-Za-z0-9._-], not '.' or '..' (fix: give the id of the "
     "run to resume: its folder's name under the work folder's runs/)"),
])
def test_the_cli_refuses_it_in_one_line_before_starting_anything(tmp_path: Path, arguments: list[str],
                                                                  error: str) -> None:
    """`--run-id a/b` printed a pydantic traceback, after Prefect's temporary server had started."""
    (tmp_path / "fedgrove.yaml").write_text("target: y\nsites: [a, b]\n")
    environment = {**os.environ, "COLUMNS": "80", "FEDGROVE_WORK_DIR": str(tmp_path / "work")}
    done = subprocess.run([sys.executable, "-m", "fedgrove_cli", *arguments], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == error
    assert done.stdout == ""
    assert not (tmp_path / "work").exists()
