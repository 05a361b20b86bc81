"""The coordinator's provisioning against the embedded aggregator, whose branches outlive a run."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from fedgrove.settings import PipelineSettings
from tasks.provisioning import provide_branch


def test_a_run_id_used_again_gets_a_branch_of_its_own(prefect_api, tmp_path: Path, monkeypatch) -> None:
    """askanna.yml runs `fedgrove demo --run-id askanna`; a second run in the same checkout failed with 409
    "branch 'run-askanna' already exists", as the embedded aggregator keeps its database in the work dir."""
    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = PipelineSettings(work_dir=tmp_path / "work", _env_file=None)

    @flow
    def provision_twice() -> list[str | None]:
        branches = []
        for attempt in range(2):
            with provide_branch(settings, sites=["site-1", "site-2"], run_id="askanna",
                                credentials_dir=tmp_path / f"credentials-{attempt}") as created:
                assert sorted(created.env_files) == ["site-1", "site-2"]
                branches.append(created.branch_id)
        return branches

    first, second = provision_twice()

    assert first and second and first != second
