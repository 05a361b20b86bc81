"""The run artifact store contract, one suite run against the local folder store and the S3 store.

The S3 store talks to a real S3-compatible server (`rclone serve s3`, see tests/s3_server.py).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedgrove.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
    ArtifactStoreUnavailable,
    InvalidArtifactName,
    LocalArtifactStore,
    S3ArtifactStore,
    artifact_store_from_url,
)

RUN = "run-20250101-abc"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return artifact_store_from_url(None, default_dir=tmp_path / "runs")
    bucket = request.getfixturevalue("s3_env")
    return artifact_store_from_url(f"s3://{bucket}/fedgrove/runs")


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "outputs"
    folder.mkdir()
    contents = {
        "model.pt": os.urandom(4096),
        "model.json": b'{"layers": 1}\n',
        "result.png": b"\x89PNG\r\n\x1a\n" + os.urandom(512),
        "epochs.csv": b"epoch,loss\n1,0.5\n",
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in contents}


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_write_file_returns_its_uri_and_reads_back(store: ArtifactStore, outputs: dict[str, Path]) -> None:
    uri = store.write_file(RUN, "model.pt", outputs["model.pt"])

    if isinstance(store, LocalArtifactStore):
        assert uri == str(store.root / RUN / "model.pt") and Path(uri).is_absolute()
    else:
        assert uri == f"s3://{store.location.bucket}/fedgrove/runs/{RUN}/model.pt"
    assert store.read_bytes(RUN, "model.pt") == outputs["model.pt"].read_bytes()


def test_write_json_round_trip(store: ArtifactStore) -> None:
    summary = {"accuracy": 0.95, "features": ["worst radius", "worst perimeter"], "rounds": 3}

    store.write_json(RUN, "summary.json", summary)

    assert json.loads(store.read_bytes(RUN, "summary.json")) == summary


def test_list_names_the_run_artifacts_sorted(store: ArtifactStore, outputs: dict[str, Path]) -> None:
    store.write_file(RUN, "model.pt", outputs["model.pt"])
    store.write_json(RUN, "summary.json", {})
    store.write_json("other-run", "summary.json", {})

    assert store.list(RUN) == ["model.pt", "summary.json"]
    assert store.list("never-ran") == []


def test_missing_artifact_raises_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound, match="model.pt"):
        store.read_bytes(RUN, "model.pt")


def test_url_reads_the_artifact_without_credentials(store: ArtifactStore, outputs: dict[str, Path]) -> None:
    store.write_file(RUN, "result.png", outputs["result.png"])

    url = store.url(RUN, "result.png", expires_in=300)

    expected_scheme = "file://" if isinstance(store, LocalArtifactStore) else "http://"
    assert url.startswith(expected_scheme)
    assert _http_get(url) == outputs["result.png"].read_bytes()


def test_publish_run_writes_every_file(store: ArtifactStore, outputs: dict[str, Path]) -> None:
    uris = store.publish_run(RUN, outputs)

    assert sorted(uris) == sorted(outputs)
    assert store.list(RUN) == sorted(outputs)
    for name, source in outputs.items():
        assert store.read_bytes(RUN, name) == source.read_bytes()


def test_publish_run_with_one_failing_file_leaves_nothing_behind(
    store: ArtifactStore, outputs: dict[str, Path], tmp_path: Path
) -> None:
    files = {**outputs, "summary.json": tmp_path / "never-written.json"}  # fails after four uploads

    with pytest.raises(ArtifactStoreError, match="summary.json"):
        store.publish_run(RUN, files)

    assert store.list(RUN) == []
    if isinstance(store, LocalArtifactStore):
        assert list((store.root / RUN).iterdir()) == []  # no temp file either


def test_publish_run_with_an_invalid_name_writes_nothing(store: ArtifactStore, outputs: dict[str, Path]) -> None:
    with pytest.raises(InvalidArtifactName):
        store.publish_run(RUN, {**outputs, "../escape.pt": outputs["model.pt"]})

    assert store.list(RUN) == []


@pytest.mark.parametrize(
    ("run_id", "name"), [("../x", "model.pt"), (RUN, "../model.pt"), (RUN, "a/b"), ("", "x"), (RUN, "..")]
)
def test_invalid_run_id_or_name_is_refused(
    store: ArtifactStore, outputs: dict[str, Path], tmp_path: Path, run_id: str, name: str
) -> None:
    for call in (
        lambda: store.write_file(run_id, name, outputs["model.pt"]),
        lambda: store.write_json(run_id, name, {}),
        lambda: store.read_bytes(run_id, name),
        lambda: store.url(run_id, name),
    ):
        with pytest.raises(InvalidArtifactName, match="expected a (run id|artifact name) of 1-128 characters"):
            call()
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_large_artifact_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    big = tmp_path / "model.pt"
    big.write_bytes(os.urandom(20 * 1024 * 1024))

    store.write_file(RUN, "model.pt", big)

    assert store.read_bytes(RUN, "model.pt") == big.read_bytes()


# --- S3 only ------------------------------------------------------------------------------------------


def test_tampered_presigned_url_is_refused(s3_env: str, outputs: dict[str, Path]) -> None:
    store = S3ArtifactStore(f"s3://{s3_env}/runs")
    store.write_file(RUN, "model.json", outputs["model.json"])
    url = store.url(RUN, "model.json")
    assert "X-Amz-Expires=604800" in url  # a week by default

    with pytest.raises(urllib.error.HTTPError) as refused:
        _http_get(url.replace("model.json", "model.pt"))
    assert refused.value.code == 403
    refused.value.close()


def test_wrong_credentials_name_the_access_key_and_the_fix(
    s3_env: str, outputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    store = S3ArtifactStore(f"s3://{s3_env}/runs")

    with pytest.raises(ArtifactStoreUnavailable) as error:
        store.publish_run(RUN, outputs)

    message = str(error.value)
    assert f"access key id {os.environ['AWS_ACCESS_KEY_ID']!r}" in message
    assert "fix: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
    assert "wrong-secret" not in message


def test_missing_bucket_names_the_bucket_and_the_fix(s3_env: str, outputs: dict[str, Path]) -> None:
    store = S3ArtifactStore("s3://no-such-bucket-fg/runs")
    expected = (
        r"S3 bucket 'no-such-bucket-fg' does not exist at endpoint http://127\.0\.0\.1:\d+ "
        r"\(fix: create it with `aws s3 mb s3://no-such-bucket-fg`, or fix the artifact store URL\)"
    )

    with pytest.raises(ArtifactStoreUnavailable, match=expected):
        store.write_file(RUN, "model.pt", outputs["model.pt"])
    with pytest.raises(ArtifactStoreUnavailable, match=expected):
        store.list(RUN)


# --- choosing a store from a URL ----------------------------------------------------------------------


def test_no_url_means_a_runs_folder_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    store = artifact_store_from_url(None)

    assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "runs"


def test_s3_url_means_the_s3_store(s3_env: str) -> None:
    store = artifact_store_from_url(f"s3://{s3_env}")
    assert isinstance(store, S3ArtifactStore)
    assert store.write_json(RUN, "summary.json", {}) == f"s3://{s3_env}/{RUN}/summary.json"


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ArtifactStoreError, match="expected the artifact store URL to be a folder"):
        artifact_store_from_url("gs://bucket/runs")
