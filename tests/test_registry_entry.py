"""A run's registry entry from its summary and per-round table: the best round by pooled test loss, where its
model is, the spec hash and the code version."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from fedgrove.demo import DemoOptions, demo_spec
from fedgrove.registry_entry import build_entry, code_version, spec_hash
from fedgrove.spec import SpecError, parse_spec

SPEC = demo_spec(None, DemoOptions(sites=2, rounds=3))
SUMMARY = {"run_id": "r", "sites": {"site-1": {"records": 80, "test_records": 20},
                                    "site-2": {"records": 40, "test_records": 10}},
           "federated_pooled": {"accuracy_test": 0.9, "loss_test": 0.3, "auc_test": 0.95}}
URIS = {"model.pt": "/runs/r/model.pt", "summary.json": "/runs/r/summary.json"}


def epochs(losses: list[float]) -> pd.DataFrame:
    rows = [{"mode": "federated_pooled", "site": "all", "epoch": n + 1, "accuracy": 0.5, "loss": 1.0,
             "accuracy_test": 0.8 + n / 100, "loss_test": loss, "auc_test": 0.9} for n, loss in enumerate(losses)]
    rows.append({"mode": "federated", "site": "site-1", "epoch": 1, "loss_test": 0.0001})  # not pooled: ignored
    return pd.DataFrame(rows)


def test_the_best_round_is_the_one_with_the_lowest_pooled_test_loss_and_its_model_is_best_model_pt() -> None:
    entry = build_entry(spec=SPEC, summary=SUMMARY, epochs=epochs([0.5, 0.2, 0.3]),
                        uris={**URIS, "best-model.pt": "/runs/r/best-model.pt"}, failures={}, code="git abc")
    assert (entry.best.round, entry.final.round, entry.rounds_run) == (2, 3, 3)
    assert entry.best.metrics == {"accuracy_test": 0.81, "loss_test": 0.2, "auc_test": 0.9}
    assert entry.final.metrics == SUMMARY["federated_pooled"]
    assert (entry.final_model, entry.best_model) == ("/runs/r/model.pt", "/runs/r/best-model.pt")
    assert {site: counts.records for site, counts in entry.sites.items()} == {"site-1": 80, "site-2": 40}
    assert entry.status == "completed"


def test_an_earlier_best_round_whose_model_was_not_kept_has_no_best_model() -> None:
    entry = build_entry(spec=SPEC, summary=SUMMARY, epochs=epochs([0.5, 0.2, 0.3]), uris=URIS, failures={},
                        code="git abc")
    assert (entry.best.round, entry.best_model) == (2, None)


def test_when_the_last_round_is_best_its_model_is_the_best_model() -> None:
    entry = build_entry(spec=SPEC, summary=SUMMARY, epochs=epochs([0.5, 0.4, 0.3]), uris=URIS, failures={},
                        code="git abc")
    assert entry.best.round == 3 and entry.best_model == "/runs/r/model.pt"


def test_a_run_with_failed_sites_is_registered_as_failed_naming_them() -> None:
    entry = build_entry(spec=SPEC, summary=SUMMARY, epochs=epochs([0.3]), uris=URIS,
                        failures={"site-3": "its data could not be read"}, code="git abc")
    assert (entry.status, entry.failure) == ("failed", "site site-3: its data could not be read")


def test_the_spec_hash_ignores_data_sources_and_changes_with_what_is_trained(tmp_path: Path) -> None:
    with_sources = demo_spec({"site-1": tmp_path / "a.csv", "site-2": tmp_path / "b.csv"},
                             DemoOptions(sites=2, rounds=3))
    assert spec_hash(with_sources) == spec_hash(SPEC) == spec_hash(SPEC.model_copy())
    assert len(spec_hash(SPEC)) == 64
    assert spec_hash(demo_spec(None, DemoOptions(sites=2, rounds=4))) != spec_hash(SPEC)


def test_the_code_version_is_the_checkouts_commit_else_the_package_version(tmp_path: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert code_version() == f"git {head}"
    assert code_version(tmp_path) == f"fedgrove {importlib.metadata.version('fedgrove')}"  # not a git checkout


def test_the_spec_reads_promotion_and_refuses_an_unknown_key_in_it() -> None:
    spec = parse_spec({"target": "y", "promotion": {"max_regression": 0.05, "auto": False}})
    assert (spec.promotion.max_regression, spec.promotion.auto) == (0.05, False)
    assert parse_spec({"target": "y"}).promotion.max_regression == 0.01
    with pytest.raises(SpecError) as error:
        parse_spec({"target": "y", "promotion": {"max_regresion": 0.05}})
    assert str(error.value) == ("spec: unknown key 'promotion.max_regresion' (fix: remove it, or correct its "
                                "spelling; the keys are listed in the README, 'The federation spec')")
