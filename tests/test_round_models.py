"""The round models a site publishes with its result, as the coordinator reads them back: the round asked for,
or None when the site kept none or not that round."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedgrove.metrics import RoundMetrics, SplitMetrics
from fedgrove.registry_entry import BestRound
from fedgrove.results import SiteResult
from tasks.run_setup import best_round_parameters
from tasks.site_results import publish_round_models, publish_site_result, read_round_model
from tests.test_checkpoints import _round


def _result(site: str) -> SiteResult:
    history = [RoundMetrics(epoch=1, train=SplitMetrics(records=40, values={"loss": 1.0}),
                            test=SplitMetrics(records=10, values={"loss": 2.0}))]
    return SiteResult.model_construct(site=site, federated=history)


def test_a_sites_round_models_read_back_by_round_and_none_when_not_kept(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = str(tmp_path / "runs")
    models = {number: _round(number).parameters for number in (1, 2, 3)}
    monkeypatch.setattr(SiteResult, "model_dump_json", lambda self, **_: "{}")
    uris = publish_site_result.fn(run_id="r", artifacts_url=store, result=_result("a"), parameters=models[3],
                                  staging=tmp_path / "staging-a")
    assert sorted(Path(uri).name for uri in uris.values()) == ["site-a-parameters.npz", "site-a.json"]
    kept = publish_round_models.fn(run_id="r", artifacts_url=store, site="a", round_models=models,
                                   staging=tmp_path / "staging-a")
    assert Path(kept).name == "site-a-round-models.npz"
    publish_site_result.fn(run_id="r", artifacts_url=store, result=_result("b"), parameters=models[3],
                           staging=tmp_path / "staging-b")
    for number, layers in models.items():
        got = read_round_model(run_id="r", artifacts_url=store, site="a", round_number=number)
        assert got is not None
        for a, b in zip(got, layers, strict=True):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    assert read_round_model(run_id="r", artifacts_url=store, site="a", round_number=4) is None
    assert read_round_model(run_id="r", artifacts_url=store, site="b", round_number=2) is None
    assert not (tmp_path / "runs" / "r" / "site-b-round-models.npz").exists()

    earlier = BestRound(final=3, best=2, metrics={}, rounds=3)
    got = best_round_parameters(run_id="r", artifacts_url=store, best=earlier, keeper="a")
    assert got is not None and all(np.array_equal(a, b) for a, b in zip(got, models[2], strict=True))
    assert best_round_parameters(run_id="r", artifacts_url=store, best=earlier, keeper=None) is None
    assert best_round_parameters(run_id="r", artifacts_url=store, best=earlier, keeper="b") is None
    last = BestRound(final=3, best=3, metrics={}, rounds=3)
    assert best_round_parameters(run_id="r", artifacts_url=store, best=last, keeper="a") is None


def test_a_damaged_round_models_archive_costs_the_best_model_not_the_run(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    store = str(tmp_path / "runs")
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "site-a-round-models.npz").write_bytes(b"PK\x03\x04 not a zip")
    earlier = BestRound(final=3, best=2, metrics={}, rounds=3)
    with caplog.at_level("WARNING"):
        assert best_round_parameters(run_id="r", artifacts_url=store, best=earlier, keeper="a") is None
    assert "the best round's model (round 2) is not kept: site a's round models cannot be read (" in caplog.text
