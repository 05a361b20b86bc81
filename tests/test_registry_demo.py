"""The registry end to end: the demo's coordinator flow run twice under a real (temporary) Prefect API, the
second run made worse on purpose (1 round instead of 5). Run 1 becomes production and stays production; the
second run's markdown artifact says why, and `fedgrove models list` shows both."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from fedgrove.demo import DemoOptions
from fedgrove.registry import Registry
from fedgrove.registry_store import LocalIndexStore
from fedgrove_cli import app
from flows.federated_training import RunOptions, federated_training
from tasks.registry import PROMOTION_KEY, REGISTRY_KEY

pytestmark = pytest.mark.slow


async def artifacts_with_key(key: str) -> list:  # type: ignore[type-arg]
    async with get_client() as client:
        return [artifact for artifact in await client.read_artifacts() if artifact.key == key]


async def log_messages() -> list[str]:
    async with get_client() as client:
        messages, offset = [], 0
        while page := await client.read_logs(limit=200, offset=offset):
            messages += [log.message for log in page]
            offset += len(page)
        return messages


@pytest.mark.usefixtures("wide_console")
def test_a_worse_second_run_is_registered_but_production_stays_on_the_first(
    prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FEDGROVE_ARTIFACTS", str(tmp_path / "runs"))
    for name in ("BRANCHKEY_HOST", "FEDGROVE_SPEC"):
        monkeypatch.delenv(name, raising=False)
    federated_training(None, RunOptions(run_id="registry-good", demo=DemoOptions(sites=2, rounds=5)))
    federated_training(None, RunOptions(run_id="registry-worse", demo=DemoOptions(sites=2, rounds=1)))

    index = Registry(LocalIndexStore(tmp_path / "runs")).index()
    assert (index.production, index.latest) == ("registry-good", "registry-worse")
    good, worse = index.runs["registry-good"], index.runs["registry-worse"]
    assert (good.rounds_run, worse.rounds_run) == (5, 1)
    assert good.final_model == str(tmp_path / "runs" / "registry-good" / "model.pt")
    assert Path(good.final_model).is_file()
    assert set(good.sites) == {"site-1", "site-2"} and sum(s.records for s in good.sites.values()) > 400
    assert good.spec_hash != worse.spec_hash  # the rounds differ

    promotions = asyncio.run(artifacts_with_key(PROMOTION_KEY))
    said = [a.data for a in promotions if a.description == "Promotion of run registry-worse"]
    assert len(said) == 1
    good_accuracy = good.final.metrics["accuracy_test"]
    worse_accuracy = worse.final.metrics["accuracy_test"]
    assert good_accuracy is not None and worse_accuracy is not None
    assert said[0].startswith("## Not promoted: production stays: run registry-worse\n\n"
                              "run registry-worse was not promoted, production stays on run registry-good: "
                              f"pooled accuracy_test {worse_accuracy:.4f} against production run registry-good's "
                              f"{good_accuracy:.4f} (higher is better) is worse by "
                              f"{good_accuracy - worse_accuracy:.4f}, more than promotion.max_regression 0.01")
    reason = said[0].split("\n\n")[1]
    deadline = time.monotonic() + 60  # a run's last log lines reach the API in a batch after it ends
    while (found := asyncio.run(log_messages()).count(f"model registry: {reason}")) == 0 and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert found == 1
    tables = asyncio.run(artifacts_with_key(REGISTRY_KEY))
    assert any("registry-worse" in str(table.data) and "registry-good" in str(table.data) for table in tables)

    listed = CliRunner().invoke(app, ["models", "list", "--artifacts", str(tmp_path / "runs")],
                                env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if "registry-" in line}
    assert set(rows) == {"registry-good", "registry-worse"}
    assert "production" in rows["registry-good"] and "latest" in rows["registry-worse"]
