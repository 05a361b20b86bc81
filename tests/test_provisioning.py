"""The coordinator's provisioning against the embedded aggregator, whose branches outlive a run."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_provisioning_takes_over_the_aggregator_the_command_launched_ahead(prefect_api, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """`fedgrove demo` launches the embedded aggregator before its modules import; the run's provisioning
    must use that process (one server per run) and stop it at the end."""
    from aggregator.embedded import launch_ahead, take_launched

    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    settings = PipelineSettings(work_dir=tmp_path / "work", _env_file=None)
    data_dir = settings.embedded_aggregator_dir
    assert data_dir == tmp_path / "work" / "aggregator"
    launched = launch_ahead(data_dir, log=data_dir / "aggregator.log")

    @flow
    def provision() -> str:
        with provide_branch(settings, sites=["site-1"], run_id="ahead",
                            credentials_dir=tmp_path / "credentials") as created:
            assert launched.running
            return created.host

    try:
        host = provision()
    finally:
        launched.stop()
    assert host == launched.url
    assert not launched.running  # provisioning stopped the process it took over
    assert take_launched(data_dir) is None  # taken once
    assert (data_dir / "aggregator.log").read_text().count("Started server process") == 1


def test_an_aggregator_launched_ahead_is_stopped_when_the_command_fails_before_its_run(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    """A command that stops before its run reaches provisioning (a refused option, a spec that does not load)
    leaves no server running."""
    import typer

    from aggregator import embedded
    from fedgrove_cli.run_commands import prefect_api as cli_services

    for name in ("BRANCHKEY_HOST", "FEDGROVE_LEAF_ENV_DIR", "FEDGROVE_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no temporary Prefect server: not its test
    monkeypatch.setenv("FEDGROVE_WORK_DIR", str(tmp_path / "work"))
    launched: list = []
    monkeypatch.setattr(embedded, "launch_ahead", lambda *a, **k: launched.append(
        embedded.AggregatorProcess(*a, **k).launch()) or launched[-1])
    with pytest.raises(typer.Exit), cli_services(verbose=False, local_run=True):
        assert launched and launched[0].running
        raise typer.Exit(1)
    assert not launched[0].running
