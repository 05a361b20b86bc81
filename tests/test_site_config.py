"""What only a site sets, and which spec a run trains: the leaf refuses site-owned keys from the coordinator,
a site's worker must say where its table is, and the coordinator never hands a site a path in sites mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedgrove.demo import DemoOptions
from fedgrove.settings import PipelineSettings
from fedgrove.site_config import SiteNotConfigured, site_config_from_environment
from fedgrove.spec import parse_spec
from flows.leaf_training import LeafAssignment
from tasks.run_setup import SpecNotRunnable, settle_spec

SPEC = {"target": "y", "sites": {"a": {"data": "/srv/a.csv"}, "b": {"data": "/srv/b.csv"}}}


def test_a_site_owned_key_sent_by_the_coordinator_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError) as raised:
        LeafAssignment.model_validate({"spec": {"target": "y", "sites": ["a"]}, "site": "a", "run_id": "r",
                                       "data_path": "/tmp/other-site.csv", "work_dir": "/tmp"})
    assert ("parameter 'data_path', 'work_dir' sets what only the site sets (its data source, scratch folder, "
            "credentials and artifact store are set at the site: FEDGROVE_SITE_DATA and friends in its worker's "
            "environment, or its own deployment's `site` parameter)") in str(raised.value)


def test_an_assignment_whose_spec_carries_a_sites_source_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        LeafAssignment.model_validate({"spec": SPEC, "site": "a", "run_id": "r"})
    assert ("parameter 'spec.sites' sets the data source of a, b; only a site sets its own (fix: send "
            "spec.shared(), the site names alone)") in str(raised.value)


def test_a_site_without_fedgrove_site_data_is_told_how_to_set_it() -> None:
    with pytest.raises(SiteNotConfigured) as raised:
        site_config_from_environment("a", PipelineSettings(_env_file=None, site_data=None))
    assert str(raised.value) == (
        "site a has no data source: FEDGROVE_SITE_DATA is not set in this worker's environment (fix: start the "
        "site's worker with FEDGROVE_SITE_DATA=<its table>, or give its own deployment a `site` parameter in "
        "prefect.yaml)"
    )


def test_a_site_data_value_that_is_no_source_is_refused_with_the_sources_words() -> None:
    with pytest.raises(SiteNotConfigured) as raised:
        site_config_from_environment("a", PipelineSettings(_env_file=None, site_data="/srv/patients.xlsx"))
    assert str(raised.value) == (
        "site a: expected the site's data file to end in .csv, .csv.gz, .parquet or .pq, got another file type "
        "(fix: export the table as CSV or Parquet, or name the file after its format)"
    )


def test_sites_mode_sends_the_site_names_and_no_path(tmp_path: Path) -> None:
    settled = settle_spec.fn(parse_spec(SPEC), spec_file=None, mode="sites", demo=DemoOptions(), work=tmp_path)
    assert settled.sites == {"a": None, "b": None}
    assert "/srv" not in settled.model_dump_json()


def test_one_machine_needs_every_sites_source(tmp_path: Path) -> None:
    with pytest.raises(SpecNotRunnable) as raised:
        settle_spec.fn(parse_spec({"target": "y", "sites": ["a", "b"]}), spec_file=None, mode="local",
                       demo=DemoOptions(), work=tmp_path)
    assert str(raised.value) == (
        "sites a, b have no data source in the spec; on one machine every site needs one (fix: give each `data: "
        "<file>` or `sql: {url_env, query}`, or run in sites mode)"
    )


def test_without_a_spec_the_weekly_run_takes_fedgrove_spec_else_the_demo(tmp_path: Path) -> None:
    spec_file = tmp_path / "weekly.yaml"
    spec_file.write_text("target: outcome\nsites:\n  clinic: {data: clinic.csv}\n")
    from_file = settle_spec.fn(None, spec_file=spec_file, mode="local", demo=DemoOptions(), work=tmp_path)
    assert from_file.target == "outcome" and from_file.sites["clinic"].data == str(tmp_path / "clinic.csv")
    demo = settle_spec.fn(None, spec_file=None, mode="local", demo=DemoOptions(sites=2), work=tmp_path / "run")
    assert demo.target == "diagnosis" and sorted(demo.sites) == ["site-1", "site-2"]
    assert all(Path(source.data).is_file() for source in demo.sites.values())
