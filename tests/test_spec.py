"""The federation spec: what a YAML file may say, and the exact error for what it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgrove.spec import FederationSpec, SpecError, load_spec, parse_spec


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedgrove.yaml"
    path.write_text(text)
    return path


def test_the_issue_example_reads_with_its_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, """
task: binary
target: outcome
features: all
exclude: [patient_id]
categorical: [smoker, region]
select: {k: 4}
model: {kind: logistic}
train: {rounds: 30, learning_rate: 0.3, batch_size: 32, local_epochs: 1, seed: 0}
evaluation: {test_fraction: 0.2}
min_records: 10
sites:
  hospital-a: {data: sites/a.csv}
  hospital-b: {data: s3://bucket/b.parquet}
  hospital-c: {sql: {url_env: HOSPITAL_C_DB, query: "select * from patients"}}
  hospital-d: {data: block:s3-bucket/hospital-d/2026/patients.csv}
"""))
    assert spec.roster() == ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
    assert spec.sites["hospital-d"].data == "block:s3-bucket/hospital-d/2026/patients.csv"
    assert spec.sites["hospital-a"].data == str(tmp_path / "sites" / "a.csv"), "relative to the spec's folder"
    assert spec.sites["hospital-b"].data == "s3://bucket/b.parquet"
    assert spec.sites["hospital-c"].sql.url_env == "HOSPITAL_C_DB"
    assert spec.min_category_count == 5 and spec.select.k == 4


def test_an_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "target: outcome\ntargte: outcome\n")
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert str(raised.value) == (f"{path}: unknown key 'targte' (fix: remove it, or correct its spelling; the keys are "
                                 "listed in the README, 'The federation spec')")


def test_an_unknown_nested_key_is_named_with_its_path() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"target": "y", "train": {"rounds": 3, "epochs": 5}})
    assert str(raised.value) == ("spec: unknown key 'train.epochs' (fix: remove it, or correct its spelling; the keys "
                                 "are listed in the README, 'The federation spec')")


def test_a_missing_target_and_a_bad_value_are_each_named() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"train": {"rounds": 0}})
    assert str(raised.value) == ("spec: target: required key missing (fix: add it)\n"
                                 "spec: train.rounds: Input should be greater than or equal to 1, got 0")


def test_a_target_listed_as_a_feature_is_refused() -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec({"target": "y", "features": ["a", "y"], "exclude": ["a"]})
    assert str(raised.value) == ("spec: (top level): the target 'y' is also listed under features; ['a'] are listed "
                                 "under both features and exclude")


def test_sites_as_a_list_of_names_is_a_roster_without_sources() -> None:
    spec = parse_spec({"target": "y", "sites": ["b", "a"]})
    assert spec.roster() == ["a", "b"] and spec.sites == {"a": None, "b": None}


def test_the_shared_spec_holds_no_source_and_the_same_fingerprint() -> None:
    spec = parse_spec({"target": "y", "sites": {"a": {"data": "/secret/path.csv"}}})
    shared = spec.shared()
    assert shared.sites == {"a": None} and "/secret" not in shared.model_dump_json()
    assert shared.fingerprint() == spec.fingerprint()
    assert parse_spec({"target": "y", "sites": ["a"], "min_records": 11}).fingerprint() != spec.fingerprint()


def test_a_spec_file_that_is_not_yaml_or_missing_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no such spec file \(fix: pass the path of your fedgrove.yaml\)$"):
        load_spec(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match=r": not valid YAML \("):
        load_spec(write(tmp_path, "target: [unclosed\n"))
    with pytest.raises(SpecError, match=r": expected a mapping of spec keys \(task, target, \.\.\.\), got list$"):
        load_spec(write(tmp_path, "- a\n- b\n"))


def test_the_spec_is_a_json_schema_prefect_can_show_as_a_form() -> None:
    schema = FederationSpec.model_json_schema()
    assert {"target", "task", "select", "train", "sites"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
