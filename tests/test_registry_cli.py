"""`fedgrove models list | show | promote` on a real registry in a local folder, through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedgrove.registry import Registry
from fedgrove.registry_store import LocalIndexStore, index_store_from_url
from fedgrove.spec import PromotionSpec
from fedgrove_cli import app
from tests.test_registry import entry

pytestmark = pytest.mark.usefixtures("wide_console")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Three runs: week-1 production, week-2 completed and latest, week-3 failed."""
    registry = Registry(LocalIndexStore(tmp_path / "runs"))
    registry.register(entry("week-1", accuracy=0.95))
    registry.promote_if_better("week-1", PromotionSpec())
    registry.register(entry("week-2", accuracy=0.90, minutes=10))
    registry.promote_if_better("week-2", PromotionSpec())
    registry.register(entry("week-3", status="failed", minutes=20))
    return tmp_path / "runs"


def models(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["models", *arguments], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_models_list_shows_every_run_newest_first_with_its_pointers_and_metric(runs: Path) -> None:
    code, output = models("list", "--artifacts", str(runs))
    assert code == 0, output
    lines = [line for line in output.splitlines() if "week-" in line]
    assert [line.split()[1] for line in lines] == ["week-3", "week-2", "week-1"]
    assert "production" in lines[2] and "latest" in lines[1] and "failed" in lines[0]
    assert "0.9500" in lines[2] and "0.9000" in lines[1]


def test_models_list_reads_the_store_from_fedgrove_artifacts(runs: Path) -> None:
    result = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200", "FEDGROVE_ARTIFACTS": str(runs)})
    assert result.exit_code == 0 and "week-1" in result.output


def test_models_show_prints_the_entry(runs: Path) -> None:
    code, output = models("show", "week-1", "--artifacts", str(runs))
    assert code == 0, output
    for expected in ("production", "git abc", "0" * 64, "100 records, 25 test", "accuracy_test 0.9500",
                     "/runs/week-1/model.pt"):
        assert expected in output


def test_models_show_and_promote_take_the_pointers_for_the_runs_they_name(runs: Path, tmp_path: Path) -> None:
    code, output = models("show", "production", "--artifacts", str(runs))
    assert code == 0 and "Run week-1" in output and "/runs/week-1/model.pt" in output, output
    code, output = models("show", "latest", "--artifacts", str(runs))
    assert code == 0 and "Run week-2" in output and "/runs/week-2/model.pt" in output, output
    code, output = models("promote", "latest", "--artifacts", str(runs))
    assert (code, output.strip()) == (0, "run week-2 is now production (was run week-1)")
    empty = tmp_path / "empty"
    Registry(LocalIndexStore(empty)).register(entry("week-9", status="failed"))
    code, output = models("show", "production", "--artifacts", str(empty))
    assert (code, output.strip()) == (1, f"error: the registry at {empty / 'registry' / 'index.json'} has no "
                                         "production run yet (fix: `fedgrove models list` shows the registered runs; "
                                         "pass one's id)")


def test_models_promote_moves_production_and_says_from_where(runs: Path) -> None:
    code, output = models("promote", "week-2", "--artifacts", str(runs))
    assert (code, output.strip()) == (0, "run week-2 is now production (was run week-1)")
    assert Registry(LocalIndexStore(runs)).index().production == "week-2"


def test_models_promote_refuses_a_failed_run_with_the_exact_message(runs: Path) -> None:
    code, output = models("promote", "week-3", "--artifacts", str(runs))
    assert code == 1
    assert output.strip() == ("error: run week-3 failed (site b: it stopped), so it cannot be promoted to "
                              "production (fix: promote a completed run; `fedgrove models list` shows each run's "
                              "status)")
    assert Registry(LocalIndexStore(runs)).index().production == "week-1"


def test_models_show_of_an_unknown_run_and_list_of_a_corrupt_index_fail_with_the_message(runs: Path) -> None:
    index = runs / "registry" / "index.json"
    code, output = models("show", "week-9", "--artifacts", str(runs))
    assert (code, output.strip()) == (1, f"error: run 'week-9' is not in the registry at {index} (fix: "
                                         "`fedgrove models list` shows the registered runs)")
    index.write_text("{")
    code, output = models("list", "--artifacts", str(runs))
    assert code == 1
    assert output.strip().startswith(f"error: registry index {index} is not valid JSON")


def test_models_list_of_an_empty_store_says_so(tmp_path: Path) -> None:
    code, output = models("list", "--artifacts", str(tmp_path))
    assert code == 0
    assert "no runs registered" in output


def test_models_list_and_promote_work_on_an_s3_registry(s3_env: str) -> None:
    url = f"s3://{s3_env}/fedgrove"
    registry = Registry(index_store_from_url(url))
    registry.register(entry("week-1"))
    registry.register(entry("week-2", minutes=10))
    code, output = models("promote", "week-1", "--artifacts", url)
    assert (code, output.strip()) == (0, "run week-1 is now production (was run (none))")
    code, output = models("list", "--artifacts", url)
    assert code == 0, output
    rows = {line.split()[1]: line for line in output.splitlines() if "week-" in line}
    assert "production" in rows["week-1"] and "latest" in rows["week-2"]
    assert f"s3://{s3_env}/fedgrove/registry/index.json" in output
