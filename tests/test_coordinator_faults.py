"""The coordinator when an organisation fails for good: the others finish on a quorum, their outputs are
kept, and the run ends Failed naming that organisation."""

from __future__ import annotations

import json

import pytest

import tasks.training
from fedgrove.simulation import leaf_seed
from flows.federated_training import FederatedTrainingConfig, federated_training

pytestmark = pytest.mark.slow


def test_one_leaf_failing_for_good_fails_the_run_by_name_and_keeps_the_others_outputs(
    prefect_api, tmp_path, monkeypatch
):
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    monkeypatch.delenv("BRANCHKEY_HOST", raising=False)
    real_train_local = tasks.training.train_local
    doomed = leaf_seed(0, "org-3")

    def train_local_failing_for_org_3(model, X, y, *, config, seed, epoch):  # type: ignore[no-untyped-def]
        if seed == doomed and epoch >= 2:
            raise RuntimeError("injected: org-3's machine is gone")
        return real_train_local(model, X, y, config=config, seed=seed, epoch=epoch)

    monkeypatch.setattr(tasks.training, "train_local", train_local_failing_for_org_3)
    state = federated_training(
        FederatedTrainingConfig(organisations=5, rounds=3, run_id="faulty", round_timeout_s=1.0, min_leaves=4),
        return_state=True,
    )
    assert state.is_failed()
    assert "leaf flows failed for org-3 (org-3: injected: org-3's machine is gone)" in state.message
    summary = json.loads((tmp_path / "runs" / "faulty" / "summary.json").read_text())
    assert sorted(summary["federated"]) == ["org-1", "org-2", "org-4", "org-5"]
    assert list(summary["failed_organisations"]) == ["org-3"]
    assert summary["identical_models"] is True
    for name in ("model.pt", "result.png", "epochs.csv"):
        assert (tmp_path / "runs" / "faulty" / name).is_file()
