"""`fedgrove leaf`: each organisation runs only its own leaf against a BranchKey server, with the variables of
the BranchKey–AskAnna guide in its environment (LEAF_PASSWORD for the session token) and its table in
FEDGROVE_SITE_DATA; no coordinator. Two leaves as separate processes against the real aggregator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedgrove.simulation import simulate
from fedgrove.site_table import table_for_spec
from fedgrove.sources import DataSource, read_source
from fedgrove.spec import FederationSpec
from fedgrove.split import split_table, write_split
from tests.aggregator_process import AggregatorProcess
from tests.data_sets import breast_cancer
from tests.prefect_server import PrefectServer, clean_environment

pytestmark = pytest.mark.slow
SPEC = {"target": "diagnosis", "select": {"k": 3}, "train": {"rounds": 2}, "sites": ["clinic-a", "clinic-b"]}


def test_two_organisations_each_running_fedgrove_leaf_get_the_simulated_model(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    aggregator = AggregatorProcess(tmp_path / "aggregator")
    aggregator.data_dir.mkdir()
    aggregator.start()
    try:
        created = aggregator.admin("POST", "/branches", json={
            "tree": "clinics", "branch": "leaf-cli", "leaves": 2, "leaf_names": SPEC["sites"]})
        (tmp_path / "fedgrove.yaml").write_text(json.dumps(SPEC))
        parts = split_table(breast_cancer(), target="diagnosis", sites=2, seed=5)
        files = {site: write_split({"table": part}, tmp_path / site)["table"]
                 for site, part in zip(SPEC["sites"], parts.values(), strict=True)}
        leaves = []
        for leaf in created["leaves"]:
            site = leaf["name"]
            env = {**clean_environment(), "PREFECT_API_URL": prefect_server.api_url, "LEAF_ID": leaf["id"],
                   "LEAF_NAME": site, "LEAF_PASSWORD": leaf["session_token"], "TREE_ID": leaf["tree_id"],
                   "BRANCH_ID": leaf["branch_id"], "OWNER_ID": leaf["owner_id"], "BRANCHKEY_HOST": aggregator.url,
                   "FEDGROVE_SITE_DATA": str(files[site]), "FEDGROVE_WORK_DIR": str(tmp_path / site / "scratch")}
            leaves.append(subprocess.Popen(
                [sys.executable, "-m", "fedgrove_cli", "leaf", "--spec", str(tmp_path / "fedgrove.yaml"),
                 "--out", str(tmp_path / site / "runs"), "--run-id", "weekly"],
                env=env, cwd=tmp_path / site, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))
        outputs = [leaf.communicate(timeout=300)[0] for leaf in leaves]
        assert [leaf.returncode for leaf in leaves] == [0, 0], "\n".join(outputs)
    finally:
        aggregator.stop()

    spec = FederationSpec.model_validate({**SPEC, "sites": {s: {"data": str(p)} for s, p in files.items()}})
    tables = {site: table_for_spec(read_source(DataSource(data=str(path))), spec, site)
              for site, path in files.items()}
    simulation = simulate(spec, tables, baselines=True, centralised=False)
    for result, output in zip(simulation.results, outputs, strict=True):
        site_dir = tmp_path / result.site / "runs" / "weekly"
        published = json.loads((site_dir / f"site-{result.site}.json").read_text())
        assert published["federated"][-1]["test"]["values"]["loss"] == pytest.approx(result.federated[-1].test.get("loss"), rel=1e-5)
        card = json.loads((site_dir / "model.json").read_text())
        assert card["preprocessing"]["selected"] == result.preprocessing.selected
        assert "federated" in output and "alone" in output and str(site_dir / "model.pt") in output
        assert "downloaded file" not in output, "the client's prints go to the debug log"
    assert not list(tmp_path.rglob("*.env")), "the leaves took their credentials from the environment only"
