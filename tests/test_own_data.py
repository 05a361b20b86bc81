"""`fedgrove train --spec` on tables other than the demo's, each site reading only its own source (CSV,
Parquet, SQL), through the real pipeline: Prefect, the embedded aggregator and the official client. The
result must equal the in-memory simulation of the same spec; bad input must stop every site at once, with
one message, and leave nothing behind."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import read_source
from fedgrove.spec import load_spec
from fedgrove.split import split_table
from fedgrove_cli import app
from tests.data_sets import affairs, anes96

pytestmark = pytest.mark.slow


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_SPEC", "FEDGROVE_SITE_DATA",
                 "FEDGROVE_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_sites(frame: pd.DataFrame, target: str, folder: Path, *, sqlite_site: str | None = None,
                parquet_site: str | None = None) -> dict[str, dict]:
    """Split `frame` over three sites; each gets its own file (CSV, Parquet or a SQLite table)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = split_table(frame, target=target, sites=3, split="dirichlet", seed=2)
    sources: dict[str, dict] = {}
    for site, part in parts.items():
        if site == sqlite_site:
            with sqlite3.connect(folder / f"{site}.db") as connection:
                part.to_sql("patients", connection, index=False)
            sources[site] = {"sql": {"url_env": "SITE_DB_URL", "query": "select * from patients"}}
        elif site == parquet_site:
            part.to_parquet(folder / f"{site}.parquet", index=False)
            sources[site] = {"data": f"sites/{site}.parquet"}
        else:
            part.to_csv(folder / f"{site}.csv", index=False)
            sources[site] = {"data": f"sites/{site}.csv"}
    return sources


def train(spec_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["train", "--spec", str(spec_path), "--out", "runs", *extra])


def simulation_of(spec_path: Path):  # type: ignore[no-untyped-def]
    spec = load_spec(spec_path)
    tables = {site: table_for_spec(read_source(source), spec, site)
              for site, source in spec.sites.items()}
    return simulate(spec, tables)


def test_a_table_with_string_categories_and_holes_from_csv_parquet_and_sqlite_equals_the_simulation(
    prefect_api, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = write_sites(affairs(), "affair", workspace / "sites", sqlite_site="site-3", parquet_site="site-2")
    monkeypatch.setenv("SITE_DB_URL", f"sqlite:///{workspace / 'sites' / 'site-3.db'}")
    spec_path = workspace / "fedgrove.yaml"
    spec_path.write_text(yaml.safe_dump({
        "target": "affair", "exclude": ["patient_id"], "select": {"k": 6}, "train": {"rounds": 3},
        "sites": sources,
    }))
    result = train(spec_path, "--run-id", "affairs")
    assert result.exit_code == 0, result.output
    assert "centralised" in result.output and "all sites (pooled)" in result.output
    run_dir = workspace / "runs" / "affairs"
    summary = json.loads((run_dir / "summary.json").read_text())
    simulation = simulation_of(spec_path)
    assert summary["labels"] == ["no", "yes"] and summary["identical_models"] is True
    for r in simulation.results:
        site = summary["sites"][r.site]
        assert (site["records"], site["test_records"]) == (r.records, r.test_records)
        assert site["federated"]["loss_test"] == pytest.approx(r.federated[-1].test.get("loss"), rel=1e-5)
        assert site["federated"]["auc_test"] == pytest.approx(r.federated[-1].test.get("auc"), rel=1e-5)
        assert site["alone"]["loss_test"] == pytest.approx(r.alone[-1].test.get("loss"), rel=1e-5)
    assert summary["centralised"]["loss_test"] == pytest.approx(simulation.centralised[-1].test.get("loss"), rel=1e-5)
    import torch

    state = torch.load(run_dir / "model.pt", weights_only=True)
    for got, expected in zip(state.values(), simulation.parameters, strict=True):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    card = json.loads((run_dir / "model.json").read_text())
    assert card["preprocessing"]["selected"] == simulation.results[0].preprocessing.selected
    assert {c["column"] for c in card["preprocessing"]["categorical"]} == {"occupation", "region"}


def test_one_site_reading_from_postgresql_and_codes_listed_as_categorical_train_and_predict(
    prefect_api, workspace: Path, postgres_database, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    """anes96 over three sites, site-3's table in a real PostgreSQL database; then `fedgrove predict`."""
    import sqlalchemy

    sources = write_sites(anes96(), "vote", workspace / "sites")
    engine = sqlalchemy.create_engine(postgres_database.url)
    with engine.begin() as connection:
        pd.read_csv(workspace / "sites" / "site-3.csv").to_sql("survey", connection, index=False)
    engine.dispose()
    (workspace / "sites" / "site-3.csv").unlink()
    monkeypatch.setenv("SITE_3_DB", postgres_database.url)
    sources["site-3"] = {"sql": {"url_env": "SITE_3_DB", "query": "select * from survey"}}
    spec_path = workspace / "fedgrove.yaml"
    spec_path.write_text(yaml.safe_dump({"target": "vote", "categorical": ["PID", "educ"], "select": {"k": 5},
                                         "train": {"rounds": 2}, "sites": sources}))
    result = train(spec_path, "--run-id", "votes")
    assert result.exit_code == 0, result.output
    summary = json.loads((workspace / "runs" / "votes" / "summary.json").read_text())
    assert summary["labels"] == [0, 1] and len(summary["features"]) == 5
    simulation = simulation_of(spec_path)
    for r in simulation.results:
        assert summary["sites"][r.site]["federated"]["loss_test"] == pytest.approx(r.federated[-1].test.get("loss"),
                                                                                  rel=1e-5)
    anes96().drop(columns=["vote"]).head(3).to_csv(workspace / "new.csv", index=False)
    predicted = CliRunner().invoke(app, ["predict", "--model", "runs/votes/model.pt", "new.csv"])
    assert predicted.exit_code == 0, predicted.output
    assert predicted.output.splitlines()[0] == "row,prediction,probability,probability_0,probability_1"


def failed_run(spec_path: Path, run_id: str) -> str:
    """`fedgrove train` as a user runs it, failing: its error line, and nothing in the artifact store."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-m", "fedgrove_cli", "train", "--spec", str(spec_path), "--out", "runs",
                           "--run-id", run_id], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert not (Path("runs") / run_id).exists(), "nothing is half-written"
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    return error.removeprefix("error: ")


def test_a_site_that_lacks_a_column_stops_every_site_at_once_with_the_same_message(
    prefect_api, workspace: Path
) -> None:
    sources = write_sites(affairs(), "affair", workspace / "sites")
    site_2 = pd.read_csv(workspace / "sites" / "site-2.csv").drop(columns=["religious"])
    site_2.to_csv(workspace / "sites" / "site-2.csv", index=False)
    spec_path = workspace / "fedgrove.yaml"
    spec_path.write_text(yaml.safe_dump({"target": "affair", "exclude": ["patient_id"], "sites": sources}))
    output = failed_run(spec_path, "missing-column")
    reason = ("the sites cannot federate: site site-2 lacks column 'religious' that sites site-1, site-3 have "
              "(fix: add it at site-2, or list 'religious' under exclude)")
    assert output == f"every site failed: sites site-1, site-2, site-3: {reason}"


@pytest.mark.parametrize(("case", "reason"), [
    ("missing-file", "site site-1: expected a CSV file at the path in the spec's sites.site-1, got no file there (fix: "
                     "correct the path, or put the file there; a relative path starts at the site's working folder)"),
    ("unset-url", "site site-3: expected a database URL in the environment variable SITE_DB_URL, got it unset (fix: "
                  "set SITE_DB_URL in the site's environment to a SQLAlchemy URL, e.g. "
                  "postgresql+psycopg://user:password@host:5432/database)"),
    ("target-absent", "site site-2: its table has no target column 'affair' (its columns: rate_marriage, age, "
                      "yrs_married, children, religious, educ, occupation, occupation_husb, outcome, region, "
                      "patient_id) (fix: correct target in the spec, or add the column at this site)"),
])
def test_a_site_that_cannot_take_part_stops_every_site_naming_it(
    prefect_api, workspace: Path, monkeypatch: pytest.MonkeyPatch, case: str, reason: str
) -> None:
    sources = write_sites(affairs(), "affair", workspace / "sites", sqlite_site="site-3")
    monkeypatch.setenv("SITE_DB_URL", f"sqlite:///{workspace / 'sites' / 'site-3.db'}")
    if case == "missing-file":
        (workspace / "sites" / "site-1.csv").unlink()
    elif case == "unset-url":
        monkeypatch.delenv("SITE_DB_URL")
    else:
        pd.read_csv(workspace / "sites" / "site-2.csv").rename(columns={"affair": "outcome"}).to_csv(
            workspace / "sites" / "site-2.csv", index=False)
    spec_path = workspace / "fedgrove.yaml"
    spec_path.write_text(yaml.safe_dump({"target": "affair", "exclude": ["patient_id"], "sites": sources}))
    output = failed_run(spec_path, case)
    shared = f"the sites cannot federate: {reason}"
    assert output == f"every site failed: sites site-1, site-2, site-3: {shared}"
    assert str(workspace) not in output, "no path in the message the sites share"
