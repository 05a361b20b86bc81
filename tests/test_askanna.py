"""AskAnna: the real SDK against a loopback stand-in of its API, the secret filter, and `askanna.yml`.

The SDK reads AA_REMOTE, AA_TOKEN and AA_RUN_SUUID once, when it is imported, and pushes again at process
exit; so each scenario runs `fedgrove.tracking` in a child process that this module drives line by line
(one JSON command in, one JSON reply out), looking at what the stand-in received between two commands.

Its length (~510 lines) is the child-process driver and the stand-in's assertions, which every scenario
shares.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
import uuid
import zoneinfo
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from fedgrove.tracking import public_configuration
from tests.askanna_standin import AskAnnaStandIn, RecordedRequest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("site-1", "site-2", "site-3")
ROUNDS = 3
METRIC_NAMES = ("accuracy", "loss", "accuracy_test", "loss_test")
SECRET_VARIABLES = ("LEAF_PASSWORD", "LEAF_SESSION_TOKEN", "AWS_SECRET_ACCESS_KEY", "FEDGROVE_ADMIN_TOKEN")
URL_PASSWORD = "url-pw-" + uuid.uuid4().hex  # only inside a URL of the configuration, never in the environment
EXPECTED_VARIABLES = {
    "sites": 3,
    "rounds": ROUNDS,
    "split": "dirichlet",
    "alpha": 0.5,
    "features": ["worst radius", "worst perimeter"],
    "train.rounds": 30,
    "train.learning_rate": 0.25,
    "train.batch_size": 16,
    "train.local_epochs": 1,
    "train.seed": 7,
    "train.optimizer": "sgd",
    "train.weight_decay": "0.0",  # the SDK stores a 0 or a False as null: they go as text
    "train.proximal_mu": "0.0",
    "train.init_from": "none",
    "run_id": "askanna",
    "mode": "local",
    "artifacts": "runs",
    "aws.region": "eu-west-1",
}
LEFT_OUT = {"admin_token", "session", "aws.secret_access_key", "notes", "mirror"}

# The child tracks what a leaf tracks (a round's metrics by name, with their epoch) and the spec's training
# options as the real pydantic model; it imports neither torch nor the flows (~8 s per child process).
CHILD = """
import json, os, sys, threading, time
from pathlib import Path

import fedgrove.tracking as tracking
from fedgrove.spec import TrainSpec


def reply(**fields):
    print(json.dumps(fields), flush=True)


def configuration():
    from pydantic import SecretStr

    env = os.environ
    return {
        "sites": 3, "rounds": %(rounds)d, "split": "dirichlet", "alpha": 0.5,
        "features": ["worst radius", "worst perimeter"], "train": TrainSpec(learning_rate=0.25, batch_size=16, seed=7),
        "run_id": "askanna", "mode": "local", "artifacts": Path("runs"),
        "admin_token": env["FEDGROVE_ADMIN_TOKEN"],
        "session": SecretStr(env["LEAF_SESSION_TOKEN"]),
        "aws": {"region": "eu-west-1", "secret_access_key": env["AWS_SECRET_ACCESS_KEY"]},
        "notes": "the leaf password is " + env["LEAF_PASSWORD"],
        "mirror": "https://fedgrove:%(url_password)s@mirror.example.org/runs",
    }


for line in sys.stdin:
    command = json.loads(line)
    op = command["op"]
    if op == "round":
        errors, started = [], time.perf_counter()

        def track(leaf, values):
            try:
                epoch = values.pop("epoch")
                tracking.track_round(values, epoch=epoch, leaf_name=leaf)
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=track, args=item) for item in command["leaves"].items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        reply(op=op, seconds=time.perf_counter() - started, errors=errors)
    elif op == "configuration":
        reply(op=op, sent=sorted(tracking.track_run_configuration(configuration())))
    elif op == "timeout":
        tracking.PUSH_TIMEOUT_S = command["seconds"]
        reply(op=op)
""" % {"rounds": ROUNDS, "url_password": URL_PASSWORD}


def round_metrics(round_number: int, leaf_index: int) -> dict[str, float | int]:
    return {
        "epoch": round_number,
        "accuracy": 0.5 + round_number / 100 + leaf_index / 1000,
        "loss": 1 / (round_number + leaf_index),
        "accuracy_test": 0.4 + round_number / 100 + leaf_index / 1000,
        "loss_test": 2 / (round_number + leaf_index),
    }


def round_command(round_number: int) -> dict[str, Any]:
    return {"op": "round", "leaves": {leaf: round_metrics(round_number, i) for i, leaf in enumerate(LEAVES, 1)}}


class Child:
    """A Python process running fedgrove.tracking, fed one JSON command per line; `finish` or `kill` ends it."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=cwd, text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True),  # type: ignore[arg-type]
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(line)
        self._lines.put(None)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def send(self, command: dict[str, Any], *, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no reply to {command['op']} within {timeout_s} s; stderr:\n{self.stderr}")
            if line is None:
                raise AssertionError(f"child exited with {self.proc.wait()} during {command['op']}:\n{self.stderr}")
            if line.startswith("{"):
                return json.loads(line)

    def finish(self) -> int:
        """Close its input (the child leaves its loop and exits normally, running the SDK's exit push)."""
        return self._end(kill=False)

    def kill(self) -> int:
        return self._end(kill=True)

    def _end(self, *, kill: bool) -> int:
        assert self.proc.stdin is not None
        if kill:
            self.proc.kill()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait(timeout=60)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            stream.close()
        return code


def child_env(tmp: Path, *, standin: AskAnnaStandIn, run_suuid: str | None, secrets: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AA_") and k not in SECRET_VARIABLES}
    env.update(secrets)
    env.update(
        AA_REMOTE=standin.url,
        AA_TOKEN=standin.token,
        AA_SERVER_CONFIG_FILE=str(tmp / "no-askanna-server-config.yml"),  # never the developer's ~/.askanna.yml
        TMPDIR=str(tmp),  # the SDK's collector files
        PYTHONWARNINGS="error",
    )
    if run_suuid:
        env["AA_RUN_SUUID"] = run_suuid
    return env


def seeded_secrets() -> dict[str, str]:
    return {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARIABLES}


@dataclass
class TrackedRun:
    run_suuid: str
    token: str
    secrets: dict[str, str]
    after_round: list[dict[str, Any]] = field(default_factory=list)  # stand-in state when each round returned
    configuration_reply: dict[str, Any] = field(default_factory=dict)
    variables_after_configuration: list[dict] = field(default_factory=list)
    metrics_after_exit: list[dict] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    exit_code: int | None = None
    stderr: str = ""


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> TrackedRun:
    """Three leaves in threads track three rounds inside an AskAnna run, then the run configuration."""
    tmp = tmp_path_factory.mktemp("askanna-run")
    run = TrackedRun(run_suuid="7Mdu-Rk2c-Pq9X-a1Bz", token=f"aa-token-{uuid.uuid4().hex}", secrets=seeded_secrets())
    with AskAnnaStandIn(token=run.token) as standin:
        child = Child(child_env(tmp, standin=standin, run_suuid=run.run_suuid, secrets=run.secrets), tmp)
        try:
            for round_number in range(1, ROUNDS + 1):
                reply = child.send(round_command(round_number))
                run.after_round.append({
                    "reply": reply,
                    "child_running": child.proc.poll() is None,
                    "metrics": standin.stored(run.run_suuid, "metric"),
                    "requests": len(standin.requests),
                })
            run.configuration_reply = child.send({"op": "configuration"})
            run.variables_after_configuration = standin.stored(run.run_suuid, "variable")
        finally:
            run.exit_code = child.finish()
        run.metrics_after_exit = standin.stored(run.run_suuid, "metric")
        run.requests = standin.requests
        run.stderr = child.stderr
    return run


def label(entry: dict, name: str) -> Any:
    (value,) = [item["value"] for item in entry["label"] if item["name"] == name]
    return value


def metric_table(entries: list[dict]) -> dict[tuple[int, str, str], float]:
    return {(label(e, "epoch"), label(e, "leaf"), e["metric"]["name"]): e["metric"]["value"] for e in entries}


def expected_table(rounds: int) -> dict[tuple[int, str, str], float]:
    return {
        (r, leaf, name): round_metrics(r, i)[name]
        for r in range(1, rounds + 1)
        for i, leaf in enumerate(LEAVES, 1)
        for name in METRIC_NAMES
    }


def test_each_round_reaches_askanna_before_the_next_round_starts(tracked_run: TrackedRun) -> None:
    for round_number, state in enumerate(tracked_run.after_round, 1):
        assert state["reply"]["errors"] == []
        assert state["child_running"], "metrics must arrive during the run, not only at process exit"
        assert metric_table(state["metrics"]) == expected_table(round_number)
        assert len(state["metrics"]) == round_number * len(LEAVES) * len(METRIC_NAMES)


def test_every_metric_carries_its_epoch_and_leaf_as_typed_labels(tracked_run: TrackedRun) -> None:
    for entry in tracked_run.metrics_after_exit:
        assert set(entry) == {"metric", "label", "run_suuid", "created_at"}
        assert set(entry["metric"]) == {"name", "value", "type"} and entry["metric"]["type"] == "float"
        assert entry["run_suuid"] == tracked_run.run_suuid
        assert sorted((item["name"], item["type"]) for item in entry["label"]) == [
            ("epoch", "integer"), ("leaf", "string"),
        ]
    assert metric_table(tracked_run.metrics_after_exit) == expected_table(ROUNDS)


def test_metrics_go_as_a_put_of_the_whole_list_with_the_run_token(tracked_run: TrackedRun) -> None:
    suuid = tracked_run.run_suuid
    puts = [r for r in tracked_run.requests if r.method == "PUT"]
    assert puts and all(r.path == f"/v1/run/{suuid}/metric/{suuid}/" for r in puts)
    assert all(r.status == 200 for r in tracked_run.requests)
    assert all(r.headers["authorization"] == f"Token {tracked_run.token}" for r in tracked_run.requests)
    assert all(set(r.json()) == {"metrics"} and r.headers["content-type"] == "application/json" for r in puts)
    sizes = [len(r.json()["metrics"]) for r in puts]
    assert sizes == sorted(sizes), "each push carries a snapshot at least as new as the one before"
    # leaves ending a round together may share a push; never more than one per round and leaf, plus the exit push
    assert ROUNDS <= len(puts) <= ROUNDS * len(LEAVES) + 1


def test_the_run_configuration_is_sent_at_once_without_its_secret_entries(tracked_run: TrackedRun) -> None:
    suuid = tracked_run.run_suuid
    assert tracked_run.configuration_reply["sent"] == sorted(EXPECTED_VARIABLES)
    patches = [r for r in tracked_run.requests if r.method == "PATCH"]
    assert patches and all(r.path == f"/v1/run/{suuid}/variable/{suuid}/" for r in patches)
    variables = {v["variable"]["name"]: v for v in tracked_run.variables_after_configuration}
    assert {name: v["variable"]["value"] for name, v in variables.items()} == EXPECTED_VARIABLES
    assert not LEFT_OUT & set(variables), "secret-looking entries are left out, not sent masked"
    assert all(label(v, "source") == "run" for v in variables.values())
    assert variables["features"]["variable"]["type"] == "list_string"


def test_no_secret_value_appears_in_anything_sent(tracked_run: TrackedRun) -> None:
    everything = "\n".join(r.text() for r in tracked_run.requests)
    assert tracked_run.requests
    for name, value in tracked_run.secrets.items():
        assert value not in everything, f"{name} leaked to AskAnna"
    assert URL_PASSWORD not in everything
    bodies = "\n".join(r.body.decode() for r in tracked_run.requests)
    assert tracked_run.token not in bodies, "AA_TOKEN belongs in the Authorization header only"


def test_the_child_exits_cleanly_and_names_only_what_it_left_out(tracked_run: TrackedRun) -> None:
    assert tracked_run.exit_code == 0, tracked_run.stderr
    lines = [line for line in tracked_run.stderr.splitlines() if line.strip()]
    assert lines[0] == (
        "left 5 configuration entries out of the AskAnna run variables (secret-looking or unsupported): "
        "admin_token, session, aws.secret_access_key, notes, mirror"
    )
    # The SDK keeps a keep-alive connection in a module-level requests.Session that it never closes; with
    # warnings as errors (PYTHONWARNINGS=error) the interpreter reports that socket at shutdown. Nothing else.
    assert all(
        line.startswith("Exception ignored in: <socket.socket") or line.startswith("ResourceWarning: unclosed <socket")
        for line in lines[1:]
    ), tracked_run.stderr


def test_outside_an_askanna_run_nothing_goes_to_the_network(tmp_path: Path) -> None:
    with AskAnnaStandIn(token="unused-token") as standin:
        child = Child(child_env(tmp_path, standin=standin, run_suuid=None, secrets=seeded_secrets()), tmp_path)
        try:
            for round_number in (1, 2):
                assert child.send(round_command(round_number))["errors"] == []
            # the SDK rewrites its whole file per metric (quadratic over a run): fedgrove leaves that to exit
            assert list((tmp_path / "askanna" / "run").glob("*/metrics.json")) == []
            child.send({"op": "configuration"})
        finally:
            assert child.finish() == 0, child.stderr
        assert standin.requests == []
    (metrics_file,) = (tmp_path / "askanna" / "run").glob("*/metrics.json")
    assert metric_table(json.loads(metrics_file.read_text())) == expected_table(2)


def test_a_failing_askanna_api_neither_stops_the_rounds_nor_loses_metrics(tmp_path: Path) -> None:
    with AskAnnaStandIn(token="aa-token", status=500) as standin:
        env = child_env(tmp_path, standin=standin, run_suuid="fail-run", secrets=seeded_secrets())
        child = Child(env, tmp_path)
        try:
            for round_number in (1, 2):
                assert child.send(round_command(round_number))["errors"] == []
            (kept,) = (tmp_path / "askanna" / "run" / "fail-run").glob("metrics.json")  # before the exit save
            assert metric_table(json.loads(kept.read_text())) == expected_table(2)
        finally:
            child.finish()  # the SDK's own exit push fails too and says so; that is the SDK's business
        assert len([r for r in standin.requests if r.method == "PUT" and r.status == 500]) >= 2
    assert "could not push metrics to AskAnna run fail-run" in child.stderr
    (metrics_file,) = (tmp_path / "askanna" / "run" / "fail-run").glob("metrics.json")
    assert metric_table(json.loads(metrics_file.read_text())) == expected_table(2)


def test_a_hung_askanna_api_holds_a_round_for_the_push_timeout_only(tmp_path: Path) -> None:
    with AskAnnaStandIn(token="aa-token", delay_s=5.0) as standin:
        child = Child(child_env(tmp_path, standin=standin, run_suuid="slow-run", secrets=seeded_secrets()), tmp_path)
        try:
            child.send({"op": "timeout", "seconds": 0.3})
            reply = child.send(round_command(1))
        finally:
            child.kill()  # skip the SDK's exit push, which would wait out the timeout again
    assert reply["errors"] == []
    assert reply["seconds"] < 3.0
    assert "could not push metrics to AskAnna run slow-run" in child.stderr
    assert "timed out" in child.stderr


# --- the secret filter on its own -------------------------------------------------------------------------


class Split(Enum):
    iid = "iid"


class Nested(BaseModel):
    learning_rate: float = 0.3
    api_key: str = "abc"


def test_public_configuration_leaves_out_every_kind_of_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_PASSWORD", "s3cr3t-from-env")
    config = {
        "rounds": 5,
        "split": Split.iid,
        "data": PurePosixPath("/data/org-1.csv"),
        "train": Nested(),
        "Admin_Token": "plain-looking",
        "password": None,
        "credentials": {"user": "x"},
        "session": SecretStr("hidden"),
        "note": "uses s3cr3t-from-env",
        "endpoint": "https://user:pw@example.org",
        "plain_url": "https://example.org/runs",
        "tags": ("a", "b"),
        "mixed": ["a", SecretStr("b")],
        "thing": object(),
    }
    variables, left_out = public_configuration(config)
    assert variables == {
        "rounds": 5,
        "split": "iid",
        "data": "/data/org-1.csv",
        "train.learning_rate": 0.3,
        "plain_url": "https://example.org/runs",
        "tags": ["a", "b"],
    }
    assert sorted(left_out) == sorted([
        "train.api_key", "Admin_Token", "password", "credentials", "session", "note", "endpoint", "mixed", "thing",
    ])


def test_short_values_of_secret_named_variables_do_not_blank_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRANCHKEY_VERIFY_SSL_KEYLESS", "1")
    assert public_configuration({"rounds": 1, "split": "iid"}) == ({"rounds": 1, "split": "iid"}, [])


# --- askanna.yml ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def askanna_yml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "askanna.yml").read_text())


def train_command(job: dict[str, Any]) -> list[str]:
    (command,) = [shlex.split(line) for line in job["job"] if line.startswith("fedgrove ")]
    return command


def test_askanna_yml_defines_the_weekly_train_model_job(askanna_yml: dict[str, Any]) -> None:
    job = askanna_yml["train-model"]
    assert job["environment"]["image"] == "askanna/python:3.11"
    assert "pip install ." in job["job"]
    assert train_command(job) == ["fedgrove", "demo", "--out", "runs", "--run-id", "askanna"]
    assert job["output"]["result"] == "runs/askanna/model.pt"
    assert job["output"]["artifact"] == [
        "runs/askanna/result.png", "runs/askanna/epochs.csv", "runs/askanna/model.json", "runs/askanna/summary.json",
    ]
    assert job["schedule"] == ["@weekly"]
    assert job["timezone"] == "Europe/Amsterdam" and job["timezone"] in zoneinfo.available_timezones()


def test_askanna_yml_passes_the_sdks_own_validation(askanna_yml: dict[str, Any]) -> None:
    """What `askanna push` checks before uploading (askanna/core/utils/validate.py)."""
    from askanna.core.utils.validate import parse_cron_line, validate_askanna_yml

    assert validate_askanna_yml(askanna_yml) is True
    assert parse_cron_line(askanna_yml["train-model"]["schedule"][0]) == "0 0 * * 0"


def test_the_pinned_torch_of_the_job_is_the_one_in_pyproject(askanna_yml: dict[str, Any]) -> None:
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [d for d in dependencies if d.startswith("torch")]
    (torch_install,) = [line for line in askanna_yml["train-model"]["job"] if " torch" in line]
    assert torch_pin in shlex.split(torch_install)


@pytest.mark.slow
def test_the_files_askanna_yml_names_exist_after_its_command_runs(
    askanna_yml: dict[str, Any], prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's own `fedgrove demo` line (2 sites, 2 rounds) run from the code folder, as AskAnna does."""
    from typer.testing import CliRunner

    from fedgrove_cli import app

    for name in ("FEDGROVE_WORK_DIR", "FEDGROVE_LEAF_ENV_DIR", "BRANCHKEY_HOST", "AA_RUN_SUUID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", "set-by-the-command")  # `--out` overwrites it; undone after the test
    monkeypatch.chdir(tmp_path)
    job = askanna_yml["train-model"]
    result = CliRunner().invoke(app, [*train_command(job)[1:], "--sites", "2", "--rounds", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    outputs = [job["output"]["result"], *job["output"]["artifact"]]
    for relative in outputs:
        assert (tmp_path / relative).stat().st_size > 0, relative
    epochs = (tmp_path / "runs/askanna/epochs.csv").read_text().splitlines()
    assert epochs[0].startswith("mode,site,epoch")


def test_askanna_yml_defines_a_train_leaf_job_with_the_guides_variables(askanna_yml: dict[str, Any]) -> None:
    job = askanna_yml["train-leaf"]
    command = train_command(job)
    assert command[:2] == ["fedgrove", "leaf"]
    spec = command[command.index("--spec") + 1]
    assert (ROOT / spec).is_file(), "the spec it names ships in the pushed folder"
    assert "--data" not in command, "each organisation's table comes from its FEDGROVE_SITE_DATA variable"
    out, run_id = command[command.index("--out") + 1], command[command.index("--run-id") + 1]
    assert job["output"]["result"] == f"{out}/{run_id}/model.pt"
    assert "LEAF_PASSWORD (masked)" in (ROOT / "askanna.yml").read_text()
