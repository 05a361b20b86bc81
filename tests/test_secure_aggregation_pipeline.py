"""Secure aggregation through the real pipeline (Prefect, the embedded aggregator, the official client): what
the server stored of every upload says nothing of the site's parameters, and the model is the one of the
same run without masking, same seeds."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrove.spec import FederationSpec
from fedgrove.split import split_table, write_split
from flows.federated_training import RunOptions, SecureAggregationNeedsEverySite, federated_training
from tests.data_sets import breast_cancer

pytestmark = pytest.mark.slow
ROUNDS = 3
KEYS = {"target": "diagnosis", "select": {"k": 4}, "model": {"kind": "mlp", "hidden": [96]},
        "train": {"rounds": ROUNDS, "learning_rate": 0.05}}


def stored_uploads(work: Path) -> dict[tuple[str, int], list[np.ndarray]]:
    """Every parameter upload the aggregator kept, by (site, training round), read from its database and blob
    folder (the branch's first rounds are preprocessing's exchanges: a secure run has one more)."""
    data = work / "aggregator"
    with sqlite3.connect(data / "aggregator.db") as db:
        rows = db.execute("select c.id, l.name, a.round from contributions c join leaves l on c.leaf_id = l.id "
                          "join aggregations a on c.aggregation_id = a.id").fetchall()
    uploads = {}
    for file_id, site, round_number in rows:
        with zipfile.ZipFile(io.BytesIO((data / "blobs" / file_id).read_bytes())) as archive:
            names = sorted((n[:-4] for n in archive.namelist() if n.startswith("layer_")), key=lambda n: int(n[6:]))
            if not names:
                continue  # a preprocessing exchange: sums, no parameters
            uploads[(site, round_number)] = [np.load(io.BytesIO(archive.read(f"{n}.npy"))) for n in names]
    first = min(round_number for _, round_number in uploads)
    return {(site, round_number - first + 1): layers for (site, round_number), layers in uploads.items()}


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, secure: bool) -> tuple[Path, dict]:
    folder = tmp_path / ("secure" if secure else "plain")
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(folder / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(folder / "runs"))
    monkeypatch.setenv("FEDGROVE_KEEP_UPLOADS", "true")  # the embedded aggregator keeps every upload for us
    paths = write_split(split_table(breast_cancer(), target="diagnosis", sites=3, seed=1), tmp_path / "sites")
    spec = FederationSpec.model_validate({**KEYS, "privacy": {"secure_aggregation": secure},
                                          "sites": {s: {"data": str(p)} for s, p in paths.items()}})
    summary = federated_training(spec, RunOptions(run_id="run"))
    return folder, summary


def test_the_server_stores_nothing_that_tells_a_sites_parameters_and_the_model_is_the_plain_ones(
    prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_SPEC", "FEDGROVE_SITE_DATA"):
        monkeypatch.delenv(name, raising=False)
    plain_dir, plain = run(tmp_path, monkeypatch, secure=False)
    secure_dir, secure = run(tmp_path, monkeypatch, secure=True)
    true, masked = stored_uploads(plain_dir / "work"), stored_uploads(secure_dir / "work")
    assert sorted(true) == sorted(masked) and len(true) == 3 * ROUNDS

    pairs_true, pairs_masked = [], []
    for key, layers in true.items():
        for layer, limbs in zip(layers, masked[key][:-1], strict=True):
            assert limbs.shape == (2, *layer.shape) and limbs.dtype == np.float64
            for limb in limbs:
                pairs_true.append(layer.reshape(-1).astype(np.float64))
                pairs_masked.append(limb.reshape(-1))
    x, m = np.concatenate(pairs_true), np.concatenate(pairs_masked)
    assert len(x) > 10_000
    assert abs(np.corrcoef(x, m)[0, 1]) < 0.05
    assert int((np.abs(m - x) < 1e-3).sum()) == 0  # masked values are integers in [0, 2^L): P(hit) ~ 1e-12 each
    assert all(masked[key][-1].shape == (3,) for key in masked)  # weighting limbs and checksum, masked too

    plain_model = torch.load(plain_dir / "runs" / "run" / "model.pt", weights_only=True)
    secure_model = torch.load(secure_dir / "runs" / "run" / "model.pt", weights_only=True)
    for a, b in zip(plain_model.values(), secure_model.values(), strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-9)
    assert secure["privacy"]["secure_aggregation"] is True
    assert json.loads((secure_dir / "runs" / "run" / "summary.json").read_text())["identical_models"] is True
    assert plain["federated_pooled"] == pytest.approx(secure["federated_pooled"], rel=1e-6)


def test_secure_aggregation_with_a_quorum_is_refused_before_anything_starts(prefect_api, tmp_path: Path) -> None:
    spec = FederationSpec.model_validate({**KEYS, "privacy": {"secure_aggregation": True},
                                          "sites": {"a": {"data": str(tmp_path / "a.csv")},
                                                    "b": {"data": str(tmp_path / "b.csv")}}})
    with pytest.raises(SecureAggregationNeedsEverySite) as raised:
        federated_training(spec, RunOptions(run_id="quorum", round_timeout_s=5, min_leaves=1))
    assert str(raised.value) == (
        "secure aggregation needs every site in every round, and a quorum (round_timeout_s / min_leaves) would "
        "aggregate without some: the masks of the missing sites would not cancel (fix: drop round_timeout_s and "
        "min_leaves, or set privacy.secure_aggregation: false)")
