"""A federated run that dies mid-way resumes from the last aggregation every site completed, and ends with the
model an uninterrupted run makes; a resume that cannot be honoured is refused by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import tasks.training
from fedgrove.demo import DemoOptions, demo_spec
from fedgrove.run_record import ResumeRefused, read_run_record
from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import read_source
from flows.federated_training import RunOptions, federated_training
from tasks.provisioning import ProvisioningError

pytestmark = pytest.mark.slow
ROUNDS = 6
SITES = 3
DIES_IN_ROUND = 4


def _die_in_round(monkeypatch: pytest.MonkeyPatch, round_number: int) -> None:
    real_fit = tasks.training.fit

    def fit_dying(parameters, arrays, *, spec, seed, epoch, state):  # type: ignore[no-untyped-def]
        if epoch >= round_number:
            raise RuntimeError(f"injected: the machine died in round {round_number}")
        return real_fit(parameters, arrays, spec=spec, seed=seed, epoch=epoch, state=state)

    monkeypatch.setattr(tasks.training, "fit", fit_dying)


def _model(run_dir: Path) -> list[np.ndarray]:
    return [layer.numpy() for layer in torch.load(run_dir / "model.pt", weights_only=True).values()]


def test_a_run_that_died_resumes_to_the_uninterrupted_model_and_a_site_behind_catches_up(
    prefect_api, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = DemoOptions(sites=SITES, rounds=ROUNDS)
    federated_training(None, RunOptions(run_id="whole", demo=demo))

    with monkeypatch.context() as patch:
        _die_in_round(patch, DIES_IN_ROUND)
        state = federated_training(None, RunOptions(run_id="cut", demo=demo), return_state=True)
    assert state.is_failed()
    assert f"injected: the machine died in round {DIES_IN_ROUND}" in state.message

    with pytest.raises(ResumeRefused) as caught:
        federated_training(None, RunOptions(run_id="cut", resume=True, demo=DemoOptions(sites=SITES, rounds=9)))
    assert str(caught.value) == ("run cut cannot resume with different demo options: demo.rounds: 6 -> 9 (fix: "
                                 "resume without them, or start a new run without --resume)")
    started_with = read_run_record(workspace / "work" / "runs" / "cut", "cut").spec
    changed = started_with.model_copy(update={"train": started_with.train.model_copy(update={"learning_rate": 0.05})})
    with pytest.raises(ResumeRefused) as caught:
        federated_training(changed, RunOptions(run_id="cut", resume=True))
    assert str(caught.value).startswith("run cut cannot resume with a different spec: ")
    assert f"train.learning_rate: {started_with.train.learning_rate} -> 0.05" in str(caught.value)

    # site-2 lost its newest checkpoint: it resumes a round behind and loads that round's aggregate, not uploads
    checkpoints = workspace / "work" / "runs" / "cut" / "leaves" / "cut" / "site-2" / "checkpoints"
    newest = f"round-{DIES_IN_ROUND - 1:06d}.npz"
    assert sorted(p.name for p in checkpoints.glob("round-*")) == [f"round-{DIES_IN_ROUND - 2:06d}.npz", newest]
    (checkpoints / newest).unlink()

    summary = federated_training(None, RunOptions(run_id="cut", resume=True))

    for got, expected in zip(_model(workspace / "runs" / "cut"), _model(workspace / "runs" / "whole"), strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    whole = json.loads((workspace / "runs" / "whole" / "summary.json").read_text())
    assert summary["federated_pooled"] == pytest.approx(whole["federated_pooled"], abs=1e-6)
    epochs = {run: pd.read_csv(workspace / "runs" / run / "epochs.csv") for run in ("cut", "whole")}
    federated = {run: frame[frame["mode"] == "federated"].reset_index(drop=True) for run, frame in epochs.items()}
    assert len(federated["cut"]) == SITES * ROUNDS
    pd.testing.assert_frame_equal(federated["cut"].drop(columns=[c for c in federated["cut"] if "second" in c]),
                                  federated["whole"].drop(columns=[c for c in federated["whole"] if "second" in c]),
                                  atol=1e-6)

    with pytest.raises(ResumeRefused) as caught:
        federated_training(None, RunOptions(run_id="cut", resume=True))
    assert str(caught.value) == ("run cut finished already: there is nothing to resume (fix: start a new run "
                                 "without --resume)")


def test_resuming_a_run_that_never_was_or_whose_aggregator_state_is_gone_is_refused(
    prefect_api, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ResumeRefused) as caught:
        federated_training(None, RunOptions(run_id="never", resume=True))
    record = workspace / "work" / "runs" / "never" / "run.json"
    assert str(caught.value) == (f"run never cannot resume: there is no record of it at {record} (fix: check the run "
                                 f"id against the folders in {record.parent.parent}, and FEDGROVE_WORK_DIR)")

    with monkeypatch.context() as patch:
        _die_in_round(patch, 2)
        state = federated_training(None, RunOptions(run_id="lost", demo=DemoOptions(sites=2, rounds=3)),
                                   return_state=True)
    assert state.is_failed()
    for path in (workspace / "work" / "aggregator").glob("aggregator.db*"):
        path.unlink()  # the aggregator's database is gone: the branch and its aggregates with it
    branch = json.loads((workspace / "work" / "runs" / "lost" / "credentials" / "branch.json").read_text())
    with pytest.raises(ProvisioningError, match=(
        rf"^run lost cannot resume: the aggregator at https?://127\.0\.0\.1:\d+ no longer has its branch "
        rf"{branch['branch_id']} \(.+\); the aggregator's state of the run is gone \(fix: start the run again without "
        r"--resume\)$"
    )):
        federated_training(None, RunOptions(run_id="lost", resume=True))


KILL_AFTER_ROUND = 20
ROUNDS_KILLED = 30


def _demo(arguments: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("FEDGROVE_", "BRANCHKEY_")) and key != "PREFECT_API_URL"}
    with open(log, "a") as output:
        return subprocess.Popen([sys.executable, "-m", "fedgrove_cli", "demo", *arguments], stdout=output,
                                stderr=subprocess.STDOUT, cwd=cwd, env=environment, start_new_session=True)


def test_a_demo_killed_after_round_20_of_30_resumes_to_the_model_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL to the demo's whole process group once every site has a checkpoint of round 20, then
    `fedgrove demo --resume`; the oracle is the same federation run uninterrupted in memory."""
    log = tmp_path / "demo.log"
    leaves = tmp_path / ".fedgrove" / "runs" / "cut" / "leaves" / "cut"
    demo = _demo(["--sites", str(SITES), "--rounds", str(ROUNDS_KILLED), "--run-id", "cut"], tmp_path, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            reached = [site for site in (f"site-{i}" for i in range(1, SITES + 1))
                       if any(int(p.stem.split("-")[1]) >= KILL_AFTER_ROUND
                              for p in (leaves / site / "checkpoints").glob("round-*.npz"))]
            if len(reached) == SITES or demo.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert demo.poll() is None, f"the demo ended before round {KILL_AFTER_ROUND}:\n{log.read_text()[-3000:]}"
        assert len(reached) == SITES, log.read_text()[-3000:]
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    assert not (tmp_path / "runs" / "cut" / "model.pt").exists()

    resumed = _demo(["--resume", "cut"], tmp_path, log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "resuming run cut" in output
    assert f"resumes run cut after round {ROUNDS_KILLED}" not in output

    data = tmp_path / ".fedgrove" / "runs" / "cut" / "data"
    spec = demo_spec({f"site-{i}": data / f"site-{i}.csv" for i in range(1, SITES + 1)},
                     DemoOptions(sites=SITES, rounds=ROUNDS_KILLED))
    uninterrupted = simulate(spec, {site: table_for_spec(read_source(source), spec, site)
                                    for site, source in spec.sites.items()})
    for got, expected in zip(_model(tmp_path / "runs" / "cut"), uninterrupted.parameters, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_a_prefect_retry_of_the_coordinator_flow_run_resumes_it(
    prefect_api, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect runs the failed coordinator again (run count 2) under the same flow run: it resumes by itself."""
    import flows.federated_training as coordinator

    dying = {"now": True}
    real_fit, real_identity = tasks.training.fit, coordinator.run_identity

    def fit_dying_on_the_first_attempt(parameters, arrays, *, spec, seed, epoch, state):  # type: ignore[no-untyped-def]
        if dying["now"] and epoch >= DIES_IN_ROUND:
            raise RuntimeError(f"injected: the machine died in round {DIES_IN_ROUND}")
        return real_fit(parameters, arrays, spec=spec, seed=seed, epoch=epoch, state=state)

    def identity_seen(run, work_dir):  # type: ignore[no-untyped-def]
        run_id, resume = real_identity(run, work_dir)
        if resume:
            dying["now"] = False  # the retry: the machine is back
        return run_id, resume

    monkeypatch.setattr(tasks.training, "fit", fit_dying_on_the_first_attempt)
    monkeypatch.setattr(coordinator, "run_identity", identity_seen)
    retried = federated_training.with_options(retries=1, retry_delay_seconds=0)
    state = retried(None, RunOptions(demo=DemoOptions(sites=2, rounds=ROUNDS)), return_state=True)
    assert state.is_completed(), state.message
    assert dying["now"] is False
    summary = state.result()
    run_dir = workspace / "runs" / summary["run_id"]
    data = workspace / "work" / "runs" / summary["run_id"] / "data"
    spec = demo_spec({f"site-{i}": data / f"site-{i}.csv" for i in (1, 2)}, DemoOptions(sites=2, rounds=ROUNDS))
    uninterrupted = simulate(spec, {site: table_for_spec(read_source(source), spec, site)
                                    for site, source in spec.sites.items()})
    for got, expected in zip(_model(run_dir), uninterrupted.parameters, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
