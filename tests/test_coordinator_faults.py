"""The coordinator when a site fails for good mid-run: the others finish on a quorum, their outputs are kept,
and the run ends Failed naming that site."""

from __future__ import annotations

import json

import pytest

import tasks.training
from fedgrove.demo import DemoOptions
from fedgrove.site_table import site_seed
from flows.federated_training import RunOptions, federated_training

pytestmark = pytest.mark.slow


def test_one_site_failing_for_good_fails_the_run_by_name_and_keeps_the_others_outputs(
    prefect_api, tmp_path, monkeypatch
):
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    real_fit = tasks.training.fit
    doomed = site_seed(0, "site-3")

    def fit_failing_for_site_3(parameters, arrays, *, spec, seed, epoch, state):  # type: ignore[no-untyped-def]
        if seed == doomed and epoch >= 2:
            raise RuntimeError("injected: site-3's machine is gone")
        return real_fit(parameters, arrays, spec=spec, seed=seed, epoch=epoch, state=state)

    monkeypatch.setattr(tasks.training, "fit", fit_failing_for_site_3)
    state = federated_training(
        None, RunOptions(run_id="faulty", round_timeout_s=1.0, min_leaves=4, demo=DemoOptions(rounds=3)),
        return_state=True,
    )
    assert state.is_failed()
    assert "site site-3 failed (site site-3: injected: site-3's machine is gone)" in state.message
    summary = json.loads((tmp_path / "runs" / "faulty" / "summary.json").read_text())
    assert sorted(summary["sites"]) == ["site-1", "site-2", "site-4", "site-5"]
    assert list(summary["failed_sites"]) == ["site-3"]
    assert summary["identical_models"] is True
    for name in ("model.pt", "result.png", "epochs.csv"):
        assert (tmp_path / "runs" / "faulty" / name).is_file()
